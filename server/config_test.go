package server_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/server"
)

// A bad configuration fails New before it writes anything: no data
// directory, no database, no generated master key.
func TestBadConfigWritesNothing(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		change func(*server.Config)
		want   string
	}{
		"unknown tracing mode":         {func(c *server.Config) { c.Tracing = "jaeger" }, "tracing"},
		"plaintext gRPC off loopback":  {func(c *server.Config) { c.ListenAddr = "0.0.0.0:0" }, "--listen"},
		"plaintext proxy off loopback": {func(c *server.Config) { c.ProxyListenAddr = "0.0.0.0:0" }, "--proxy-listen"},
		"plaintext ops off loopback":   {func(c *server.Config) { c.OpsListenAddr = "0.0.0.0:0" }, "--ops-listen"},
		"listen address without port":  {func(c *server.Config) { withTLS(t, c); c.OpsListenAddr = "127.0.0.1" }, "--ops-listen"},
		"profiles off loopback":        {func(c *server.Config) { withTLS(t, c); c.OpsListenAddr, c.Profiling = "0.0.0.0:0", true }, "--pprof"},
		"missing TLS file":             {func(c *server.Config) { withTLS(t, c); c.TLSKeyFile += ".missing" }, "TLS certificate and key"},
		"client CA without TLS":        {func(c *server.Config) { c.ClientCAFile = "ca.pem" }, "needs TLS"},
		"both master key settings":     {func(c *server.Config) { c.MasterKeyFile = filepath.Join(t.TempDir(), "master.key") }, "not both"},
		"malformed master key":         {func(c *server.Config) { c.MasterKey = "short" }, "CREDBROKER_MASTER_KEY"},
		"missing master key file": {func(c *server.Config) {
			c.MasterKey, c.MasterKeyFile = "", filepath.Join(t.TempDir(), "missing.key")
		}, "master key"},
		"bootstrap principal with a space": {func(c *server.Config) { c.BootstrapAdminPrincipal = "spiffe://example.org/ops team" }, "--bootstrap-admin-principal"},
		"bootstrap principal a caller key": {func(c *server.Config) { c.BootstrapAdminPrincipal = "callerKeys/ops" }, "--bootstrap-admin-principal"},
		"plaintext token endpoint":         {func(c *server.Config) { c.Provider.JumpCloudTokenURLEU = "http://jumpcloud.example/oauth2/token" }, "--jumpcloud-token-url-eu"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg, _, _ := newConfig(t)
			cfg.DataDir = filepath.Join(t.TempDir(), "data")
			c.change(&cfg)
			srv, err := server.New(cfg)
			if err == nil {
				closeUnserved(t, srv)
				t.Fatal("New accepted the configuration")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
			if _, err := os.Stat(cfg.DataDir); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("New created the data directory: %v", err)
			}
		})
	}
}
