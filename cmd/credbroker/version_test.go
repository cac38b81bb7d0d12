package main

import (
	"io"
	"net/http"
	"os/exec"
	"runtime"
	"strings"
	"testing"
)

// `credbroker version` and `--version` print the build's version, commit,
// date and Go version; the start-up log line and /metrics
// (credbroker_build_info) carry the same version and commit.
func TestVersion(t *testing.T) {
	e := newE2ESetup(t)
	want := "commit: unknown"
	if head, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil {
		want = "commit: " + strings.TrimSpace(string(head)) // "-dirty" may follow
	}
	var printed []string
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(e.bin, arg).Output()
		if err != nil {
			t.Fatalf("credbroker %s: %v", arg, err)
		}
		printed = append(printed, string(out))
	}
	v := printed[0]
	if printed[1] != v || !strings.HasPrefix(v, "credbroker ") || !strings.Contains(v, want) ||
		!strings.Contains(v, "go:     "+runtime.Version()) || !strings.Contains(v, "built:  ") {
		t.Fatalf("credbroker version printed:\n%s\ncredbroker --version printed:\n%s\nwant %q and %s", v, printed[1], want, runtime.Version())
	}
	// Unstamped (go build), the version is Go's pseudo-version of the commit.
	version := strings.Fields(v)[1]
	commit := strings.Fields(strings.SplitN(v, "commit: ", 2)[1])[0]

	r := startBinary(t, e.bin, &e.logs, e.args...)
	resp, err := http.Get("http://" + r.opsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	r.stop(t)
	var info string
	for _, line := range strings.Split(string(metrics), "\n") {
		if strings.HasPrefix(line, "credbroker_build_info{") {
			info = line
		}
	}
	if !strings.Contains(info, `commit="`+commit+`"`) || !strings.Contains(info, `version="`+version+`"`) || !strings.Contains(info, `goversion="`+runtime.Version()+`"`) || !strings.HasSuffix(info, " 1") {
		t.Fatalf("credbroker_build_info: %q, want commit %s", info, commit)
	}
	if !strings.Contains(e.logs.String(), `"msg":"credbroker listening","version":"`+version+`","commit":"`+commit+`"`) {
		t.Fatalf("the start-up line lacks the version and commit:\n%s", e.logs.String())
	}
}
