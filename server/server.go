// Package server is credbroker's gRPC server: configuration, start-up
// checks, wiring of the core packages, and the thin AccountService and
// TokenService handlers that validate requests, call the core and map
// errors to status codes (errors.go).
package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/seal"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// File names inside the data directory.
const (
	dbFileName        = "credbroker.db"
	masterKeyFileName = "master.key"
)

// Config is the server's configuration. Zero fields take the values of
// DefaultConfig; cmd/credbroker documents the matching flags.
type Config struct {
	// ListenAddr must be a loopback address until caller authentication
	// exists. Port 0 picks a free port.
	ListenAddr string
	// DataDir holds the database; it is created (or restricted) to mode 0700.
	DataDir string
	// MasterKeyFile and MasterKey (the key's text itself) are the two ways
	// to give the master key; set at most one. With neither, a key is
	// generated into DataDir/master.key for local use.
	MasterKeyFile string
	MasterKey     string

	// JumpCloud endpoints, overridable for tests and private deployments.
	JumpCloudTokenURLUS, JumpCloudTokenURLEU string
	JumpCloudAPIURLUS, JumpCloudAPIURLEU     string

	// UpstreamTimeout bounds every token request.
	UpstreamTimeout time.Duration
	// RefreshMargin, RefreshConcurrency, RetryBackoffMin, RetryBackoffMax
	// and RejectedRecheck tune the token manager (see tokens.Config).
	RefreshMargin                    time.Duration
	RefreshConcurrency               int
	RetryBackoffMin, RetryBackoffMax time.Duration
	RejectedRecheck                  time.Duration
	// ShutdownTimeout is how long in-flight calls get to finish on shutdown.
	ShutdownTimeout time.Duration
	// LockTimeout is how long to wait for the database lock before giving up.
	LockTimeout time.Duration

	Logger *slog.Logger
}

// DefaultConfig is what the broker runs with when nothing is configured:
// loopback only, ./credbroker-data, JumpCloud's documented endpoints.
func DefaultConfig() Config {
	ep := provider.DefaultEndpoints()
	tc := tokens.DefaultConfig()
	return Config{
		ListenAddr:          "127.0.0.1:50051",
		DataDir:             "./credbroker-data",
		JumpCloudTokenURLUS: ep.JumpCloudTokenURLUS,
		JumpCloudTokenURLEU: ep.JumpCloudTokenURLEU,
		JumpCloudAPIURLUS:   ep.JumpCloudAPIURLUS,
		JumpCloudAPIURLEU:   ep.JumpCloudAPIURLEU,
		UpstreamTimeout:     provider.DefaultTimeout,
		RefreshMargin:       tc.RefreshMargin,
		RefreshConcurrency:  tc.RefreshConcurrency,
		RetryBackoffMin:     tc.BackoffMin,
		RetryBackoffMax:     tc.BackoffMax,
		RejectedRecheck:     tc.RejectedRecheck,
		ShutdownTimeout:     10 * time.Second,
		LockTimeout:         time.Second,
		Logger:              slog.Default(),
	}
}

func (c *Config) setDefaults() {
	d := DefaultConfig()
	for _, f := range []struct{ p, v *string }{
		{&c.ListenAddr, &d.ListenAddr}, {&c.DataDir, &d.DataDir},
		{&c.JumpCloudTokenURLUS, &d.JumpCloudTokenURLUS}, {&c.JumpCloudTokenURLEU, &d.JumpCloudTokenURLEU},
		{&c.JumpCloudAPIURLUS, &d.JumpCloudAPIURLUS}, {&c.JumpCloudAPIURLEU, &d.JumpCloudAPIURLEU},
	} {
		if *f.p == "" {
			*f.p = *f.v
		}
	}
	for _, f := range []struct{ p, v *time.Duration }{
		{&c.UpstreamTimeout, &d.UpstreamTimeout}, {&c.RefreshMargin, &d.RefreshMargin},
		{&c.RetryBackoffMin, &d.RetryBackoffMin}, {&c.RetryBackoffMax, &d.RetryBackoffMax},
		{&c.RejectedRecheck, &d.RejectedRecheck}, {&c.ShutdownTimeout, &d.ShutdownTimeout},
		{&c.LockTimeout, &d.LockTimeout},
	} {
		if *f.p <= 0 {
			*f.p = *f.v
		}
	}
	if c.RefreshConcurrency <= 0 {
		c.RefreshConcurrency = d.RefreshConcurrency
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
}

// Server is a running credbroker. Create it with New and run it with Serve.
type Server struct {
	cfg      Config
	log      *slog.Logger
	store    *store.Store
	tokens   *tokens.Manager
	grpc     *grpc.Server
	health   *health.Server
	listener net.Listener
}

// New checks the configuration, opens the data directory and the listener,
// and loads every account. It fails, touching nothing, if the master key is
// not the one the data directory was created with.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := checkLoopback(cfg.ListenAddr); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("restrict data directory: %w", err)
	}
	master, err := loadMasterKey(cfg)
	if err != nil {
		return nil, err
	}
	st, err := openStore(cfg, master)
	if err != nil {
		return nil, err
	}
	s, err := build(cfg, st, master)
	if err != nil {
		st.Close()
		return nil, err
	}
	return s, nil
}

func build(cfg Config, st *store.Store, master *seal.MasterKey) (*Server, error) {
	prov := provider.New(provider.Config{
		Endpoints: provider.Endpoints{
			JumpCloudTokenURLUS: cfg.JumpCloudTokenURLUS, JumpCloudTokenURLEU: cfg.JumpCloudTokenURLEU,
			JumpCloudAPIURLUS: cfg.JumpCloudAPIURLUS, JumpCloudAPIURLEU: cfg.JumpCloudAPIURLEU,
		},
		Timeout: cfg.UpstreamTimeout,
	})
	tm := tokens.New(tokens.Config{
		RefreshMargin:      cfg.RefreshMargin,
		RefreshConcurrency: cfg.RefreshConcurrency,
		BackoffMin:         cfg.RetryBackoffMin,
		BackoffMax:         cfg.RetryBackoffMax,
		RejectedRecheck:    cfg.RejectedRecheck,
		Logger:             cfg.Logger,
	}, st, master, prov)
	if err := tm.Load(); err != nil {
		return nil, fmt.Errorf("load accounts: %w", err)
	}
	lis, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, err
	}

	errs := errorMapper{log: cfg.Logger}
	g := grpc.NewServer(grpc.ChainUnaryInterceptor(
		recovery.UnaryServerInterceptor(recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
			cfg.Logger.Error("panic in handler", "method", methodName(ctx))
			return status.Error(codes.Internal, "internal error")
		})),
	))
	credbrokerv1.RegisterAccountServiceServer(g, &accountService{accounts: accounts.New(st, master, prov, tm), errs: errs})
	credbrokerv1.RegisterTokenServiceServer(g, &tokenService{tokens: tm, errs: errs})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)

	return &Server{cfg: cfg, log: cfg.Logger, store: st, tokens: tm, grpc: g, health: hs, listener: lis}, nil
}

func methodName(ctx context.Context) string {
	m, _ := grpc.Method(ctx)
	return m
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.listener.Addr() }

// Serve answers calls and refreshes tokens until ctx ends, then shuts down
// gracefully: in-flight calls get ShutdownTimeout to finish, the refresher
// stops, and the database is closed.
func (s *Server) Serve(ctx context.Context) error {
	refreshCtx, stopRefresh := context.WithCancel(context.Background())
	refreshDone := make(chan struct{})
	go func() { s.tokens.Run(refreshCtx); close(refreshDone) }()

	serveErr := make(chan error, 1)
	go func() { serveErr <- s.grpc.Serve(s.listener) }()
	s.log.Info("credbroker listening", "addr", s.Addr().String(), "data_dir", s.cfg.DataDir)

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
	}
	s.log.Info("shutting down")
	s.health.Shutdown()
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(s.cfg.ShutdownTimeout):
		s.log.Warn("in-flight calls did not finish in time; closing them", "timeout", s.cfg.ShutdownTimeout)
		s.grpc.Stop()
	}
	stopRefresh()
	<-refreshDone
	if cerr := s.store.Close(); cerr != nil && err == nil {
		err = cerr
	}
	s.log.Info("stopped")
	return err
}

// checkLoopback refuses any listen address that is not loopback: without
// caller authentication, anyone who can connect can read every token.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("listen address %q is not a loopback address: until caller authentication is configured, credbroker only listens on 127.0.0.1, ::1 or localhost", addr)
}

// loadMasterKey reads the configured master key or, with none configured,
// the generated local one, generating it on first start.
func loadMasterKey(cfg Config) (*seal.MasterKey, error) {
	switch {
	case cfg.MasterKeyFile != "" && cfg.MasterKey != "":
		return nil, errors.New("set either --master-key-file or CREDBROKER_MASTER_KEY, not both")
	case cfg.MasterKey != "":
		k, err := seal.ParseMasterKey(cfg.MasterKey)
		if err != nil {
			return nil, fmt.Errorf("CREDBROKER_MASTER_KEY: %w", err)
		}
		return k, nil
	case cfg.MasterKeyFile != "":
		return readMasterKeyFile(cfg.MasterKeyFile, cfg.Logger)
	}

	path := filepath.Join(cfg.DataDir, masterKeyFileName)
	_, statErr := os.Stat(path)
	if statErr == nil {
		cfg.Logger.Warn("USING A LOCAL MASTER KEY stored beside the data: for local use only. In production, keep the key elsewhere and pass --master-key-file or CREDBROKER_MASTER_KEY", "key_file", path)
		return readMasterKeyFile(path, cfg.Logger)
	}
	if !errors.Is(statErr, fs.ErrNotExist) {
		return nil, statErr
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, dbFileName)); err == nil {
		return nil, fmt.Errorf("%s holds a database but no master key is configured and %s is missing: pass the key it was created with (--master-key-file or CREDBROKER_MASTER_KEY)", cfg.DataDir, path)
	}
	text, err := seal.GenerateMasterKey()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("write generated master key: %w", err)
	}
	if _, err := f.WriteString(text + "\n"); err != nil {
		f.Close()
		return nil, err
	}
	if err := errors.Join(f.Sync(), f.Close(), syncDir(cfg.DataDir)); err != nil {
		return nil, err
	}
	cfg.Logger.Warn("GENERATED A LOCAL MASTER KEY beside the data: for local use only. In production, keep the key elsewhere and pass --master-key-file or CREDBROKER_MASTER_KEY", "key_file", path)
	return seal.ParseMasterKey(text)
}

// syncDir makes a new file's directory entry durable, so that a crash
// cannot leave a database whose generated key file is gone.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

func readMasterKeyFile(path string, log *slog.Logger) (*seal.MasterKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read master key: %w", err)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("master key file is readable by other users; chmod 600 it", "key_file", path, "mode", fi.Mode().Perm().String())
	}
	k, err := seal.ParseMasterKey(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("master key file %s: %w", path, err)
	}
	return k, nil
}

// openStore opens the database and checks the master key against it. A new
// database records a check value for the key; an existing one is only read.
func openStore(cfg Config, master *seal.MasterKey) (*store.Store, error) {
	st, err := store.Open(filepath.Join(cfg.DataDir, dbFileName), cfg.LockTimeout)
	if err != nil {
		return nil, err
	}
	check, err := st.KeyCheck()
	if err == nil {
		if check == nil {
			if check, err = master.KeyCheck(); err == nil {
				err = st.SetKeyCheck(check)
			}
		} else if master.VerifyKeyCheck(check) != nil {
			err = fmt.Errorf("%w (data directory %s); refusing to start and leaving the database untouched", seal.ErrWrongMasterKey, cfg.DataDir)
		}
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}
