package server_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/internal/store"
)

// freeAddr is a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

// busyAddr is a loopback address that something else listens on until the
// test ends.
func busyAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	return lis.Addr().String()
}

// held reports whether some listener holds addr.
func held(t *testing.T, addr string) bool {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return true
	}
	lis.Close()
	return false
}

// lockedOut reports whether the data directory of cfg is locked by a
// broker (the database lock), by trying to build a second broker on it.
func lockedOut(t *testing.T, cfg server.Config) bool {
	t.Helper()
	cfg.LockTimeout = 50 * time.Millisecond
	cfg.ListenAddr, cfg.ProxyListenAddr, cfg.OpsListenAddr, cfg.HubListenAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	srv, err := server.New(cfg)
	if err == nil {
		if err := srv.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		return false
	}
	if !errors.Is(err, store.ErrLocked) {
		t.Fatalf("a second New on the data directory: %v", err)
	}
	return true
}

// assertReleased fails the test if a listener holds any of addrs or the
// data directory of cfg is locked, after what happened.
func assertReleased(t *testing.T, cfg server.Config, addrs []string, after string) {
	t.Helper()
	for _, a := range addrs {
		if held(t, a) {
			t.Errorf("%s is still held after %s", a, after)
		}
	}
	if lockedOut(t, cfg) {
		t.Errorf("the data directory is still locked after %s", after)
	}
}

// Close releases what New acquired, for a server that was never served:
// its listeners and the lock of its data directory. It can be called
// again, and Serve refuses a closed server.
func TestCloseWithoutServe(t *testing.T) {
	t.Parallel()
	cfg, _, _ := newConfig(t) // every listener on a port of the system's choosing
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	addrs := []string{srv.Addr().String(), srv.ProxyAddr().String(), srv.OpsAddr().String(), srv.HubAddr().String()}
	for _, a := range addrs { // what Close must release is held
		if !held(t, a) {
			t.Fatalf("New does not listen on %s", a)
		}
	}
	if !lockedOut(t, cfg) {
		t.Fatal("a second broker opened the data directory of a first one")
	}

	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	assertReleased(t, cfg, addrs, "Close")
	if err := srv.Close(); err != nil {
		t.Errorf("a second Close: %v", err)
	}
	if err := srv.Serve(context.Background()); err == nil {
		t.Error("Serve served a closed server")
	}
}

// Whichever listener's address is in use, New fails before it creates
// anything, naming the flag, and releases what it acquired before: no
// listener stays open and the data directory is unlocked, so that a
// second New on it succeeds.
func TestNewFailingLateReleasesEverything(t *testing.T) {
	t.Parallel()
	for _, busy := range []string{"--listen", "--proxy-listen", "--ops-listen", "--hub-listen"} {
		t.Run(busy, func(t *testing.T) {
			t.Parallel()
			cfg, _, _ := newConfig(t)
			cfg.DataDir = filepath.Join(cfg.DataDir, "data")
			listen := map[string]*string{"--listen": &cfg.ListenAddr, "--proxy-listen": &cfg.ProxyListenAddr, "--ops-listen": &cfg.OpsListenAddr, "--hub-listen": &cfg.HubListenAddr}
			var free []string
			for flag, addr := range listen {
				if flag == busy {
					*addr = busyAddr(t)
				} else {
					*addr = freeAddr(t)
					free = append(free, *addr)
				}
			}
			srv, err := server.New(cfg)
			if err == nil {
				srv.Close()
				t.Fatalf("New listened on %s, which is in use", *listen[busy])
			}
			if !strings.HasPrefix(err.Error(), busy+" "+*listen[busy]+": the address is in use") {
				t.Fatalf("New: %v", err)
			}
			if _, err := os.Stat(cfg.DataDir); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("New made the data directory before finding %s in use: %v", busy, err)
			}
			assertReleased(t, cfg, free, "New failed")
		})
	}
}

// Close after Serve has returned is safe; Close while Serve runs stops
// it, and waits for it.
func TestCloseAfterAndDuringServe(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.stop()
	if err := b.srv.Close(); err != nil {
		t.Fatalf("Close after Serve: %v", err)
	}
	if err := b.srv.Close(); err != nil {
		t.Fatalf("a second Close: %v", err)
	}

	cfg := b.cfg
	cfg.ListenAddr = "127.0.0.1:0"
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr().String()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background()) }()
	// Serving has begun once the ops listener answers.
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + srv.OpsAddr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := srv.Close(); err != nil {
		t.Fatalf("Close while serving: %v", err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	assertReleased(t, cfg, []string{addr}, "Close while serving")
}
