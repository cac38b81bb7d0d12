// Package version says which build of credbroker this is: the release
// version, commit and build date stamped by the Makefile (-ldflags -X),
// or else what the Go toolchain recorded in the binary (a `go run` or
// `go build` in a checkout records the commit and its date).
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Stamped with -ldflags "-X github.com/credbroker/credbroker/internal/version.version=..."
// (see the Makefile's build target).
var (
	version string
	commit  string
	date    string
)

// Info describes the running build.
type Info struct {
	Version   string // a release (v1.2.0), or "dev"
	Commit    string // the git commit, with "-dirty" if the tree had changes; "unknown" if not recorded
	Date      string // when it was built (stamped), or else when its commit was made; "unknown" if not recorded
	GoVersion string
}

// Get returns the running build's Info.
func Get() Info {
	i := Info{Version: version, Commit: commit, Date: date, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version // go install ...@v1.2.0
		}
		var dirty bool
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && i.Commit == "":
				i.Commit = s.Value
			case s.Key == "vcs.time" && i.Date == "":
				i.Date = s.Value
			case s.Key == "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty && commit == "" && i.Commit != "" {
			i.Commit += "-dirty"
		}
	}
	i.Version = or(i.Version, "dev")
	i.Commit = or(i.Commit, "unknown")
	i.Date = or(i.Date, "unknown")
	return i
}

// String is what `credbroker version` prints.
func (i Info) String() string {
	return fmt.Sprintf("credbroker %s\n  commit: %s\n  built:  %s\n  go:     %s\n", i.Version, i.Commit, i.Date, i.GoVersion)
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
