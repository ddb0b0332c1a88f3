package main

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// version is the release this build calls itself; a release build sets it
// with -ldflags "-X main.version=1.2.3".
var version = "0.1.0"

// versionText is what `opencluster --version` prints: the version, the
// commit it was built from (with its time, and "modified" when the working
// tree had changes), the Go toolchain and platform, and the build flags
// that change what the binary does (tags, cgo and its C flags, GOAMD64...).
func versionText(info *debug.BuildInfo, ok bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "opencluster %s\n", version)
	if !ok {
		b.WriteString("commit unknown (no build information in this binary)\n")
		return b.String()
	}
	set := map[string]string{}
	var flags []string
	for _, s := range info.Settings {
		set[s.Key] = s.Value
		switch {
		case strings.HasPrefix(s.Key, "vcs"):
		case s.Value == "":
		default:
			flags = append(flags, s.Key+"="+s.Value)
		}
	}
	if rev := set["vcs.revision"]; rev != "" {
		extra := set["vcs.time"]
		if set["vcs.modified"] == "true" {
			extra += ", modified"
		}
		fmt.Fprintf(&b, "commit %s (%s)\n", rev, strings.TrimPrefix(extra, ", "))
	} else {
		b.WriteString("commit unknown (built outside a git checkout, or with -buildvcs=false)\n")
	}
	fmt.Fprintf(&b, "go %s, module %s %s\n", info.GoVersion, info.Main.Path, info.Main.Version)
	fmt.Fprintf(&b, "build %s\n", strings.Join(flags, " "))
	return b.String()
}

func init() {
	info, ok := debug.ReadBuildInfo()
	rootCmd.Version = version
	rootCmd.SetVersionTemplate(versionText(info, ok))
}
