// A minimal CNI client on libcni, the containernetworking/cni library that
// runtimes (and cnitool) use: `cni-client add|check|del CONFDIR NETNAME NETNS`
// loads the network's conflist from CONFDIR and runs the whole plugin chain
// for NETNS, finding plugins in CNI_PATH, as cnitool does. cnitool itself is
// not packaged in Debian; libcni is (golang-github-appc-cni-dev).
// CNI_CAPABILITY_ARGS, if set, is a JSON object of capability arguments
// (e.g. {"portMappings": [...]}), which libcni passes as runtimeConfig to
// the plugins whose conflist entry declares the capability, as runtimes do.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: cni-client add|check|del CONFDIR NETNAME NETNS")
		os.Exit(2)
	}
	verb, dir, name, netns := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	conf, err := libcni.LoadConfList(dir, name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cni := libcni.NewCNIConfig(filepath.SplitList(os.Getenv("CNI_PATH")), nil)
	rt := &libcni.RuntimeConf{ContainerID: "cni-client-" + filepath.Base(netns), NetNS: netns, IfName: "eth0"}
	if args := os.Getenv("CNI_CAPABILITY_ARGS"); args != "" {
		if err := json.Unmarshal([]byte(args), &rt.CapabilityArgs); err != nil {
			fmt.Fprintln(os.Stderr, "CNI_CAPABILITY_ARGS:", err)
			os.Exit(2)
		}
	}
	ctx := context.Background()
	switch verb {
	case "add":
		var result interface{ Print() error }
		result, err = cni.AddNetworkList(ctx, conf, rt)
		if err == nil {
			err = result.Print()
		}
	case "check":
		err = cni.CheckNetworkList(ctx, conf, rt)
	case "del":
		err = cni.DelNetworkList(ctx, conf, rt)
	default:
		err = fmt.Errorf("unknown verb %q", verb)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
