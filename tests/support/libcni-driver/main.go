// libcni-driver runs one CNI operation on a conflist through libcni, exactly as containerd
// and CRI-O do, so tests exercise the real chain semantics (prevResult threading, reverse-order
// DEL, result caching, capability args).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	conflist := flag.String("conflist", "", "conflist file")
	netns := flag.String("netns", "", "netns path")
	id := flag.String("id", "", "container id")
	ifname := flag.String("ifname", "eth0", "interface name")
	args := flag.String("args", "", "CNI_ARGS, K=V;K=V")
	annotations := flag.String("annotations", "", "pod annotations JSON for io.kubernetes.cri.pod-annotations")
	binDir := flag.String("bin-dir", "/usr/lib/cni", "plugin dirs, colon separated")
	cacheDir := flag.String("cache-dir", "", "libcni cache dir")
	flag.Parse()
	if flag.NArg() != 1 || *conflist == "" || *id == "" {
		fmt.Fprintln(os.Stderr, "usage: libcni-driver [flags] add|del|check")
		os.Exit(2)
	}
	list, err := libcni.ConfListFromFile(*conflist)
	if err != nil {
		fail(err)
	}
	rt := &libcni.RuntimeConf{ContainerID: *id, NetNS: *netns, IfName: *ifname}
	for _, pair := range strings.Split(*args, ";") {
		if k, v, ok := strings.Cut(pair, "="); ok {
			rt.Args = append(rt.Args, [2]string{k, v})
		}
	}
	if *annotations != "" {
		var a map[string]string
		if err := json.Unmarshal([]byte(*annotations), &a); err != nil {
			fail(err)
		}
		rt.CapabilityArgs = map[string]interface{}{"io.kubernetes.cri.pod-annotations": a}
	}
	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(*binDir, ":"), *cacheDir, nil)
	ctx := context.Background()
	switch flag.Arg(0) {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := res.Print(); err != nil {
			fail(err)
		}
	case "del":
		err = cni.DelNetworkList(ctx, list, rt)
	case "check":
		err = cni.CheckNetworkList(ctx, list, rt)
	default:
		fmt.Fprintln(os.Stderr, "unknown operation", flag.Arg(0))
		os.Exit(2)
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
