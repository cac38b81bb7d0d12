// Command credbroker runs the credential broker (serve), administers a
// running one over its API (accounts, callers, token, audit, backup),
// works on a stopped one's data directory (rekey, restore, through
// server/datadir), and runs what trying it out needs (fake-jumpcloud,
// dev-certs). It parses flags and the environment into configuration and
// does nothing else.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/credbroker/credbroker/internal/version"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/datadir"
	"github.com/credbroker/credbroker/server/devetcd"
	"github.com/credbroker/credbroker/server/devpki"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
	"github.com/credbroker/credbroker/server/oauthfake"
)

const envPrefix = "CREDBROKER_"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(args[1:], stdout, stderr)
	case "fake-jumpcloud":
		err = fakeJumpCloud(args[1:], stdout, stderr)
	case "fake-oauth":
		err = fakeOAuth(args[1:], stdout, stderr)
	case "dev-certs":
		err = devCerts(args[1:], stdout, stderr)
	case "dev-etcd":
		err = devEtcd(args[1:], stdout, stderr)
	case "rekey":
		err = rekey(args[1:], stdout, stderr)
	case "rotate-master-key":
		err = rotateMasterKey(args[1:], stdout, stderr)
	case "backup":
		err = backup(args[1:], stdout, stderr)
	case "restore":
		err = restore(args[1:], stdout, stderr)
	case "accounts", "callers", "admins", "token", "audit", "webhooks":
		err = runAdmin(args[0], args[1:], stdout, stderr)
	case "version", "--version", "-version", "help", "-h", "--help":
		if len(args) > 1 {
			fmt.Fprintf(stderr, "credbroker: %s takes no arguments\n", args[0])
			return 2
		}
		if strings.Contains(args[0], "version") {
			fmt.Fprint(stdout, version.Get())
		} else {
			usage(stdout)
		}
		return 0
	default:
		if strings.HasPrefix(args[0], "-") {
			fmt.Fprintf(stderr, "credbroker: unknown flag %s: flags go after a command (see: credbroker help)\n", args[0])
		} else {
			fmt.Fprintf(stderr, "credbroker: unknown command %q (see: credbroker help)\n", args[0])
		}
		return 2
	}
	var usage *usageError
	var config *server.ConfigError
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &usage), errors.As(err, &config):
		fmt.Fprintln(stderr, "credbroker:", err)
		return 2
	case err != nil:
		fmt.Fprintln(stderr, "credbroker:", err)
		return 1
	}
	return 0
}

// mayBeNegative are the flags a negative value means something for.
var mayBeNegative = map[string]bool{"rate-limit": true, "unauthenticated-rate-limit": true, "etcd-history-retention": true}

// noNegatives refuses a negative value of a flag that counts or times
// something (0 means its default).
func noNegatives(fs *flag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		g, ok := f.Value.(flag.Getter)
		if err != nil || !ok || mayBeNegative[f.Name] {
			return
		}
		var negative bool
		switch v := g.Get().(type) {
		case time.Duration:
			negative = v < 0
		case int:
			negative = v < 0
		case int64:
			negative = v < 0
		case float64:
			negative = v < 0
		}
		if negative {
			err = usagef(fs.Name(), "--%s must not be negative, not %s (0 means its default)", f.Name, f.Value)
		}
	})
	return err
}

// usageError is a command line the command cannot run: an unknown command
// or flag, a bad flag value, missing or extra arguments. It exits with 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// usagef is a usageError, with a pointer to help for the command named.
func usagef(command, format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...) + fmt.Sprintf(" (see: credbroker %s --help)", command)}
}

// flagName finds a flag the flag package names in an error ("-bogus").
var flagName = regexp.MustCompile(`(^|: |flag )-(-?)([A-Za-z0-9][^ :]*)`)

// parseFlags is fs.Parse that prints nothing but the help asked for, and
// returns a usageError naming flags as they are written (--name).
func parseFlags(fs *flag.FlagSet, args []string) error {
	usage, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	fs.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		usage()
		return err
	case err != nil:
		msg := strings.Replace(err.Error(), "flag provided but not defined", "unknown flag", 1)
		return usagef(fs.Name(), "%s", flagName.ReplaceAllString(msg, "$1--$3"))
	}
	return nil
}

func usage(w io.Writer) {
	fmt.Fprint(w, `credbroker keeps third-party API credentials and hands out short-lived tokens.

Usage:
  credbroker serve [flags]            run the broker (credbroker serve --help)
  credbroker fake-jumpcloud [flags]   run a local stand-in for JumpCloud's token endpoint
  credbroker fake-oauth [flags]       run a local stand-in for a provider whose users sign in by redirect
  credbroker dev-certs [flags]        write a throwaway CA and certificates for trying mTLS locally
  credbroker dev-etcd [flags]         run an etcd member on loopback for trying a cluster of brokers locally
  credbroker rotate-master-key        move a running broker's (or cluster's) database to a new master key
  credbroker rekey [flags]            move the database to a new master key (broker stopped)
  credbroker backup --out FILE        snapshot a running broker's database
  credbroker restore --in FILE        put a backup in place (broker stopped)
  credbroker version                  print the version, commit, build date and Go version (also --version)

Administration of a running broker (each with --help). They reach it at
--broker or CREDBROKER_ADDR (default 127.0.0.1:50051) with a caller key
from CREDBROKER_CALLER_KEY (or --caller-key-file, CREDBROKER_CALLER_KEY_FILE)
and/or a client certificate (--tls-cert and --tls-key, CREDBROKER_CLIENT_CERT
and CREDBROKER_CLIENT_KEY), over TLS with --tls-ca (CREDBROKER_TLS_CA);
--output table or json (CREDBROKER_CLI_OUTPUT). No serve variable is read.
  credbroker accounts link|list|get|update|delete|grant|ungrant|add-secret|remove-secret|connect-link
  credbroker callers create|list|revoke|delete
  credbroker admins list|add|remove   client-certificate principals with the admin role
  credbroker token get ACCOUNT
  credbroker audit list
  credbroker webhooks create|list|get|delete   endpoints credential events are POSTed to
`)
}

func serve(args []string, stdout, stderr io.Writer) error {
	var (
		cfg         server.Config
		d           = server.DefaultConfig()
		logFormat   string
		logLevel    slog.Level
		printConfig bool
		// bootstrapKeyFile holds the operator's first admin key.
		bootstrapKeyFile string
	)
	fs := newFlagSet("serve", stderr, `Runs the broker. Every flag can also be set by the environment variable shown
beside it, or in a config file (--config): a YAML map of flag names to values,
like "listen: 0.0.0.0:50051". The command line wins over the environment,
which wins over the config file. --print-config shows the result and where
each value came from, in the config file's format. The master key can also be given
as CREDBROKER_MASTER_KEY (never as a flag, which other users could see in ps).
With no master key configured, one is generated into the data directory for
local use only. The whole configuration is checked before the data
directory, a database or a master key is created.

On the first start of a new database the broker creates an admin caller key
and prints it once on standard output, unless --bootstrap-admin-key-file
holds one you made, or --bootstrap-admin-principal names a
client-certificate principal to be the first admin instead. Later starts
print none: admins make more with "credbroker callers create ID --role
admin".`)
	fs.StringVar(&cfg.ListenAddr, "listen", d.ListenAddr, "gRPC listen address; without TLS it must be a loopback address")
	fs.StringVar(&cfg.ProxyListenAddr, "proxy-listen", d.ProxyListenAddr, `egress proxy (HTTP) listen address; it serves TLS and client certificates like --listen, and without TLS it must be a loopback address. "off" disables it`)
	fs.Int64Var(&cfg.Proxy.MaxRequestBytes, "proxy-max-request-bytes", d.Proxy.MaxRequestBytes, "largest request body the egress proxy forwards")
	fs.Int64Var(&cfg.Proxy.MaxResponseBytes, "proxy-max-response-bytes", d.Proxy.MaxResponseBytes, "largest response body the egress proxy passes back; a longer one is cut off and the connection aborted")
	fs.DurationVar(&cfg.Proxy.Timeout, "proxy-timeout", d.Proxy.Timeout, "how long the egress proxy waits for an API's response headers")
	fs.StringVar(&cfg.OpsListenAddr, "ops-listen", d.OpsListenAddr, `address of /metrics (Prometheus), /healthz and /readyz (they hold no secret); it serves HTTPS with --tls-cert, without asking for client certificates, and without TLS it must be a loopback address. "off" disables it`)
	fs.BoolVar(&cfg.Profiling, "pprof", false, "serve Go's profiles (CPU, heap, goroutines, contention, execution traces) under /debug/pprof/ on --ops-listen, which must then be a loopback address")
	fs.StringVar(&cfg.HubListenAddr, "hub-listen", d.HubListenAddr, `address of the Hub, the admins' web pages; it serves HTTPS with --tls-cert, and without TLS it must be a loopback address. "off" disables it`)
	fs.StringVar(&cfg.PublicURL, "public-url", d.PublicURL, "the Hub's address as browsers reach it (e.g. https://credbroker.example.com behind a load balancer), on which connect links are built; default: the Hub's own address")
	fs.DurationVar(&cfg.Hub.SessionTTL, "hub-session-ttl", d.Hub.SessionTTL, "how long a sign-in to the Hub lasts")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert", "", "PEM certificate (chain) of the broker; with --tls-key enables TLS, required off loopback")
	fs.StringVar(&cfg.TLSKeyFile, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&cfg.ClientCAFile, "client-ca", "", "PEM bundle of CAs whose client certificates prove callers' principals (mTLS); needs --tls-cert")
	fs.StringVar(&bootstrapKeyFile, "bootstrap-admin-key-file", "", `on first start, make the caller key in this file (one you made: echo "cbk_$(head -c 32 /dev/urandom | basenc --base64url | tr -d =)") the admin key, instead of printing a new one on standard output, where a service manager would log it`)
	fs.StringVar(&cfg.BootstrapAdminPrincipal, "bootstrap-admin-principal", "", "on first start, make this client-certificate principal (a URI SAN as it is, e.g. spiffe://example.org/ops; dns:NAME for a DNS SAN; cn:TEXT for a subject CN) the admin instead of creating an admin caller key")
	fs.Float64Var(&cfg.Gate.RateLimit, "rate-limit", d.Gate.RateLimit, "calls per second each caller may make on average; negative turns limiting off")
	fs.IntVar(&cfg.Gate.RateBurst, "rate-burst", d.Gate.RateBurst, "calls each caller may make at once above --rate-limit")
	fs.Float64Var(&cfg.Gate.UnauthenticatedRateLimit, "unauthenticated-rate-limit", d.Gate.UnauthenticatedRateLimit, "calls per second without valid credentials (none, or an unknown, revoked or expired caller key or certificate) each peer IP address may make on average; beyond it the address gets RESOURCE_EXHAUSTED before its credentials are looked at, valid ones too, until its budget refills. Negative turns this off")
	fs.IntVar(&cfg.Gate.UnauthenticatedRateBurst, "unauthenticated-rate-burst", d.Gate.UnauthenticatedRateBurst, "calls without valid credentials each peer IP address may make at once above --unauthenticated-rate-limit")
	fs.DurationVar(&cfg.Audit.MaxAge, "audit-max-age", d.Audit.MaxAge, "delete audit events older than this")
	fs.IntVar(&cfg.Audit.MaxEvents, "audit-max-events", d.Audit.MaxEvents, "keep at most this many audit events, deleting the oldest calls (GetToken, proxied, refused or failed calls); admin changes and the broker's own events go by --audit-max-age only")
	fs.DurationVar(&cfg.Events.Retention, "event-retention", d.Events.Retention, "keep credential events (EventService) this long: a watcher can resume after an event for as long")
	fs.DurationVar(&cfg.Webhooks.Timeout, "webhook-timeout", d.Webhooks.Timeout, "how long a webhook endpoint has to answer a delivery")
	fs.DurationVar(&cfg.Webhooks.RetryFor, "webhook-retry-for", d.Webhooks.RetryFor, "how long an event is retried on a webhook endpoint that fails before it is given up and the next one delivered")
	fs.BoolVar(&cfg.Webhooks.AllowLinkLocal, "webhook-allow-link-local", false, "let webhook deliveries go to link-local addresses (169.254.0.0/16, fe80::/10), where cloud metadata services answer, and to those services' other addresses (fd00:ec2::254, 100.100.100.200)")
	fs.StringVar(&cfg.DataDir, "data-dir", d.DataDir, "directory for the database (created with mode 0700)")
	fs.StringVar(&cfg.MasterKeyFile, "master-key-file", "", "file holding the 32-byte master key, base64 or hex")
	previousKeyFlag(fs, &cfg.Config)
	storageFlags(fs, &cfg.Config, d.Config)
	fs.DurationVar(&cfg.Etcd.HistoryRetention, "etcd-history-retention", d.Etcd.HistoryRetention, "how long etcd keeps the earlier values of what the broker overwrote or deleted before the broker compacts etcd's history (cluster-wide), so that etcd does not grow without bound; negative leaves compaction to etcd's own --auto-compaction-* settings")
	fs.DurationVar(&cfg.Etcd.LockTTL, "etcd-lock-ttl", d.Etcd.LockTTL, "how long the token-refresh locks of a replica that died or lost touch with etcd outlive it, before another replica may refresh those accounts (whole seconds, at least etcd's minimum lease)")
	fs.StringVar(&cfg.Provider.JumpCloudTokenURLUS, "jumpcloud-token-url-us", d.Provider.JumpCloudTokenURLUS, "JumpCloud US token endpoint")
	fs.StringVar(&cfg.Provider.JumpCloudTokenURLEU, "jumpcloud-token-url-eu", d.Provider.JumpCloudTokenURLEU, "JumpCloud EU token endpoint")
	fs.StringVar(&cfg.Provider.JumpCloudTokenURLIN, "jumpcloud-token-url-in", d.Provider.JumpCloudTokenURLIN, "JumpCloud India token endpoint: unverified, so there is no default; India service accounts need it (third-party tools name https://admin-oauth.id.in.jumpcloud.com/oauth2/token)")
	fs.StringVar(&cfg.Provider.JumpCloudAPIURLUS, "jumpcloud-api-url-us", d.Provider.JumpCloudAPIURLUS, "JumpCloud US API base URL, returned with tokens and the egress proxy's target")
	fs.StringVar(&cfg.Provider.JumpCloudAPIURLEU, "jumpcloud-api-url-eu", d.Provider.JumpCloudAPIURLEU, "JumpCloud EU API base URL, returned with tokens and the egress proxy's target")
	fs.StringVar(&cfg.Provider.JumpCloudAPIURLIN, "jumpcloud-api-url-in", d.Provider.JumpCloudAPIURLIN, "JumpCloud India API base URL, returned with tokens and the egress proxy's target")
	fs.DurationVar(&cfg.Provider.Timeout, "upstream-timeout", d.Provider.Timeout, "time limit of each request to a provider, whatever the caller's deadline")
	fs.DurationVar(&cfg.Tokens.RefreshMargin, "refresh-margin", d.Tokens.RefreshMargin, "renew tokens this long before they expire (at most half their lifetime), less up to a quarter of their lifetime at random")
	fs.IntVar(&cfg.Tokens.RefreshConcurrency, "refresh-concurrency", d.Tokens.RefreshConcurrency, "most background token requests at once")
	fs.DurationVar(&cfg.Tokens.BackoffMin, "retry-backoff-min", d.Tokens.BackoffMin, "first retry delay after a provider failure")
	fs.DurationVar(&cfg.Tokens.BackoffMax, "retry-backoff-max", d.Tokens.BackoffMax, "longest retry delay after provider failures")
	fs.DurationVar(&cfg.Tokens.RejectedRecheck, "rejected-recheck", d.Tokens.RejectedRecheck, "how long to wait before asking again after the provider rejected credentials")
	fs.DurationVar(&cfg.Tokens.ForcedInterval, "min-ttl-refresh-interval", d.Tokens.ForcedInterval, "a GetToken min_ttl that the cached token does not meet forces at most one new token per account per interval (others get RESOURCE_EXHAUSTED); an API's 401 to an API key, or its success after one, prompts at most one check of the key per interval")
	fs.DurationVar(&cfg.Tokens.ExpiryWarning, "secret-expiry-warning", d.Tokens.ExpiryWarning, "accounts whose secrets expire within this window show SECRET_EXPIRING and are warned about daily")
	fs.DurationVar(&cfg.CompactInterval, "compact-interval", d.CompactInterval, "how often to compact the database file when accounts or secrets were deleted, so that their sealed data and keys leave its freed pages (also done on start and shutdown)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", d.ShutdownTimeout, "how long in-flight calls may take to finish on SIGINT/SIGTERM")
	fs.StringVar(&cfg.Tracing, "tracing", d.Tracing, `"otlp" sends OpenTelemetry spans of gRPC calls and provider requests with the OTLP/gRPC exporter, configured by the standard OTEL_EXPORTER_OTLP_* and OTEL_SERVICE_NAME variables; "off" sends none`)
	fs.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	fs.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	fs.String(configFlag, "", "YAML config file of flag names and values; the environment and the command line override it")
	fs.BoolVar(&printConfig, "print-config", false, "print the effective configuration (secrets redacted) and exit")
	sources, err := parseWithSources(fs, args, envName)
	if err != nil {
		return err
	}
	masterKeysFromEnv(&cfg.Config)
	if err := noNegatives(fs); err != nil {
		return err
	}
	if len(cfg.Etcd.Endpoints) > 0 && cfg.Storage != datadir.StorageEtcd {
		return usagef("serve", "--etcd-endpoints is set, but --storage is %q: add --storage etcd, or drop the endpoints", cfg.Storage)
	}
	if printConfig {
		keySource := "generated into the data directory (local use only)"
		switch {
		case cfg.MasterKey == "" && cfg.MasterKeyFile == "" && cfg.Storage == datadir.StorageEtcd:
			keySource = "none configured, which --storage etcd refuses"
		case cfg.MasterKey != "":
			keySource = "from CREDBROKER_MASTER_KEY (redacted)"
		case cfg.MasterKeyFile != "":
			keySource = "from --master-key-file"
		}
		if cfg.PreviousMasterKey != "" {
			keySource += "; previous master key from CREDBROKER_PREVIOUS_MASTER_KEY (redacted)"
		}
		return printConfigTo(stdout, fs, sources, keySource)
	}

	if bootstrapKeyFile != "" {
		key, err := os.ReadFile(bootstrapKeyFile)
		if err != nil {
			return &usageError{fmt.Sprintf("--bootstrap-admin-key-file: %v", err)}
		}
		cfg.BootstrapAdminKey = strings.TrimSpace(string(key))
	}

	logs := newBatchedWriter(stderr)
	defer logs.Close()
	var handler slog.Handler
	switch logFormat {
	case "text":
		handler = slog.NewTextHandler(logs, &slog.HandlerOptions{Level: logLevel})
	case "json":
		handler = slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: logLevel})
	default:
		return &usageError{fmt.Sprintf("--log-format must be text or json, not %q", logFormat)}
	}
	cfg.Logger = slog.New(flushOnWarn{handler, logs})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	if key := srv.BootstrapAdminKey(); key != "" {
		fmt.Fprintf(stdout, `
credbroker created the first admin caller key, callerKeys/bootstrap-admin.
It is shown only now and never logged; keep it like a root password:

    %s

Send it as "authorization: Bearer <key>". Create your own admin key with it,
then revoke callerKeys/bootstrap-admin.

`, key)
	}
	return srv.Serve(ctx)
}

func rekey(args []string, stdout, stderr io.Writer) error {
	var (
		cfg        datadir.Config
		d          = datadir.DefaultConfig()
		newKeyFile string
	)
	fs := newFlagSet("rekey", stderr, `Moves the database in --data-dir from its current master key to a new one,
while the broker is stopped (credbroker rotate-master-key does the same on
a running broker or cluster). Every account gets a fresh data key, wrapped
by the new master key, and its secrets and cached token are sealed again
with it; the broker's MAC key is re-wrapped (caller keys keep working) and
every record is tagged under the new key. Interrupted at any point, running
rekey again finishes the job; until then the broker starts only with both
keys (the old one as --previous-master-key-file). Then the file is
compacted, so that it holds nothing the old master key opens. Backups taken
before still open with the old key only. Stop the broker first.

The current key is given as for serve (--master-key-file or
CREDBROKER_MASTER_KEY); the new one with --new-master-key-file or
CREDBROKER_NEW_MASTER_KEY (never as a flag value, which ps would show).`)
	fs.StringVar(&cfg.DataDir, "data-dir", d.DataDir, "directory holding the database")
	fs.StringVar(&cfg.MasterKeyFile, "master-key-file", "", "file holding the current 32-byte master key, base64 or hex")
	fs.StringVar(&newKeyFile, "new-master-key-file", "", "file holding the new master key")
	fs.DurationVar(&cfg.LockTimeout, "lock-timeout", d.LockTimeout, "how long to wait for the database if another process holds it")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg.MasterKey = os.Getenv(envPrefix + "MASTER_KEY")
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	newKey := os.Getenv(envPrefix + "NEW_MASTER_KEY")
	switch {
	case newKeyFile != "" && newKey != "":
		return &usageError{"set either --new-master-key-file or CREDBROKER_NEW_MASTER_KEY, not both"}
	case newKeyFile != "":
		data, err := os.ReadFile(newKeyFile)
		if err != nil {
			return &usageError{fmt.Sprintf("--new-master-key-file: %v", err)}
		}
		newKey = string(data)
	case newKey == "":
		return &usageError{"no new master key: set --new-master-key-file or CREDBROKER_NEW_MASTER_KEY (make one with: head -c 32 /dev/urandom | base64)"}
	}
	res, err := datadir.Rekey(cfg, newKey)
	if err != nil {
		return err
	}
	if res.AlreadyDone {
		fmt.Fprintf(stdout, "the database in %s is already under the new master key; nothing more to do\n", cfg.DataDir)
		return nil
	}
	fmt.Fprintf(stdout, "the database is under the new master key: this run moved %d accounts to fresh data keys and tagged %d other records anew; start the broker with the new key now\n", res.Accounts, res.Records)
	return nil
}

func devCerts(args []string, stdout, stderr io.Writer) error {
	var dir, hosts, clients string
	var force bool
	fs := toolFlagSet("dev-certs", stderr, `Writes a throwaway CA (ca.pem), a server certificate (server.pem,
server-key.pem) and client certificates (NAME.pem, NAME-key.pem) into a
directory, for trying mTLS on one machine. Keys are unencrypted: never use
them for anything real. A directory that holds a CA already is left alone
unless --force is given: a broker may be trusting it.`)
	fs.StringVar(&dir, "dir", "./credbroker-certs", "directory to write into (created with mode 0700)")
	fs.StringVar(&hosts, "hosts", "127.0.0.1,localhost", "comma-separated IP addresses and DNS names of the server certificate")
	fs.StringVar(&clients, "clients", "admin=spiffe://credbroker.test/admin,billing=spiffe://credbroker.test/billing", "comma-separated NAME=PRINCIPAL client certificates; PRINCIPAL is a URI such as a SPIFFE ID (a URI SAN), dns:NAME (a DNS SAN) or cn:TEXT (the subject CN)")
	fs.BoolVar(&force, "force", false, "replace the CA and certificates in --dir (brokers and clients using them must then be restarted with the new ones)")
	if _, err := parseWithSources(fs, args, noEnv); err != nil {
		return err
	}
	type client struct {
		name, principal string
		id              devpki.Identity
	}
	var wanted []client
	for _, c := range strings.Split(clients, ",") {
		name, principal, ok := strings.Cut(strings.TrimSpace(c), "=")
		if !ok || name == "" || principal == "" || strings.ContainsAny(name, "/\\") {
			return &usageError{fmt.Sprintf("--clients: %q is not NAME=PRINCIPAL", c)}
		}
		id, err := devpki.ForPrincipal(principal)
		if err != nil {
			return &usageError{fmt.Sprintf("--clients: %s: %v", name, err)}
		}
		wanted = append(wanted, client{name, principal, id})
	}
	if _, err := os.Stat(filepath.Join(dir, "ca.pem")); err == nil && !force {
		return fmt.Errorf("%s holds a CA already (ca.pem), which a running broker may trust: pass --force to replace it, or choose another --dir", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := devpki.NewCA("credbroker dev CA")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca.CertPEM, 0o644); err != nil {
		return err
	}
	var sid devpki.Identity
	for _, h := range strings.Split(hosts, ",") {
		if ip := net.ParseIP(strings.TrimSpace(h)); ip != nil {
			sid.IPAddresses = append(sid.IPAddresses, ip)
		} else if h = strings.TrimSpace(h); h != "" {
			sid.DNSNames = append(sid.DNSNames, h)
		}
	}
	leaf, err := ca.Server(sid)
	if err == nil {
		err = leaf.WriteFiles(dir, "server")
	}
	if err != nil {
		return err
	}
	for _, c := range wanted {
		leaf, err := ca.Client(c.id)
		if err == nil {
			err = leaf.WriteFiles(dir, c.name)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s/%s.pem: client certificate for %s\n", dir, c.name, c.principal)
	}
	fmt.Fprintf(stdout, "%s/ca.pem: CA; %s/server.pem: server certificate for %s\n", dir, dir, hosts)
	return nil
}

func devEtcd(args []string, stdout, stderr io.Writer) error {
	m := devetcd.Member{LogLevel: "warn"}
	fs := toolFlagSet("dev-etcd", stderr, `Runs one etcd member on loopback, in plaintext and without authentication,
for trying a cluster of brokers on one machine (serve --storage etcd
--etcd-endpoints http://CLIENT). Alone, it is a cluster of one; for three,
start three with different names, addresses and directories and the same
--cluster. Restarted on its data directory, a member rejoins its cluster.
Never for production: run etcd itself there, with TLS.`)
	fs.StringVar(&m.Name, "name", "m0", "the member's name in --cluster")
	fs.StringVar(&m.Dir, "data-dir", "./credbroker-etcd", "directory of the member's data")
	fs.StringVar(&m.ClientAddr, "client", "127.0.0.1:2379", "loopback address for clients (the brokers' --etcd-endpoints)")
	fs.StringVar(&m.PeerAddr, "peer", "127.0.0.1:2380", "loopback address for the other members")
	fs.StringVar(&m.Cluster, "cluster", "", "every member's NAME=PEER, comma-separated, e.g. m0=127.0.0.1:2380,m1=127.0.0.1:2382,m2=127.0.0.1:2384; empty for this member alone")
	fs.BoolVar(&m.Fast, "fast", false, "heartbeats of 50 ms and elections of 500 ms instead of etcd's 100 ms and 1 s, so that failover takes less time")
	if _, err := parseWithSources(fs, args, noEnv); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	e, err := devetcd.Start(m)
	if err != nil {
		return err
	}
	defer e.Close()
	fmt.Fprintf(stdout, "etcd member %s serving clients at %s (data in %s)\n", m.Name, m.ClientURL(), m.Dir)
	select {
	case <-ctx.Done():
		return nil
	case err := <-e.Err():
		return err
	}
}

func fakeJumpCloud(args []string, stdout, stderr io.Writer) error {
	var (
		listen, clientID, clientSecret, nextSecret, apiKey, orgID string
		ttl, apiDelay                                             time.Duration
		anyClient                                                 bool
	)
	fs := toolFlagSet("fake-jumpcloud", stderr, `Serves a stand-in for JumpCloud's OAuth token endpoint at /oauth2/token and
its API at /api, for trying the broker without a JumpCloud account. It
accepts one client (with two secrets) and one API key, and checks requests
as JumpCloud does.
Never use it for anything real.`)
	fs.StringVar(&listen, "listen", "127.0.0.1:8085", "listen address")
	fs.StringVar(&clientID, "client-id", "demo-client", "the client id it accepts")
	fs.StringVar(&clientSecret, "client-secret", "demo-secret", "the client secret it accepts")
	fs.StringVar(&nextSecret, "next-client-secret", "demo-secret-2", "a second client secret it accepts, for trying rotation; empty for none")
	fs.StringVar(&apiKey, "api-key", "demo-api-key", "the API key its API accepts")
	fs.StringVar(&orgID, "org-id", "", "the organization ID the API key belongs to; calls with the key must send it as x-org-id")
	fs.DurationVar(&ttl, "token-ttl", time.Hour, "expires_in of the tokens it issues")
	fs.DurationVar(&apiDelay, "api-delay", 0, "how long each API answer takes, like a real API's latency")
	fs.BoolVar(&anyClient, "any-client", false, "accept any client id with --client-secret, as if each were a service account of its own (for linking many accounts)")
	if _, err := parseWithSources(fs, args, noEnv); err != nil {
		return err
	}
	fake := jumpcloudfake.New(clientID, clientSecret)
	if anyClient {
		fake.AcceptAnyClient(clientSecret)
	}
	if nextSecret != "" {
		fake.AddClientSecret(clientID, nextSecret)
	}
	fake.SetTokenTTL(ttl)
	fake.SetAPIDelay(apiDelay)
	fake.SetAPIKey(apiKey, orgID)
	fmt.Fprintf(stdout, "fake JumpCloud token endpoint: http://%s%s (client id %q)\nfake JumpCloud API: http://%s%s\n", listen, jumpcloudfake.TokenPath, clientID, listen, jumpcloudfake.APIPath)
	return serveFake(listen, logRequests(fake, fakeLog(stderr), clientSecret, nextSecret, apiKey))
}

// fakeOAuth serves a stand-in for a provider whose users sign in by redirect.
func fakeOAuth(args []string, stdout, stderr io.Writer) error {
	var (
		listen, clientID, clientSecret, user, password string
		ttl, grace                                     time.Duration
	)
	fs := toolFlagSet("fake-oauth", stderr, `Serves a stand-in for an OAuth 2.0 provider whose users sign in by redirect
(authorization code with PKCE), for trying the broker's sign-in by redirect:
a sign-in page at /authorize, a token endpoint at /token that rotates
refresh tokens (a rotated one used again after the grace interval revokes
its whole grant), and an API at /api that accepts the tokens it issued.
Never use it for anything real.`)
	fs.StringVar(&listen, "listen", "127.0.0.1:8086", "listen address")
	fs.StringVar(&clientID, "client-id", "demo-app", "the app's client id it accepts")
	fs.StringVar(&clientSecret, "client-secret", "demo-app-secret", "the app's client secret it accepts")
	fs.StringVar(&user, "user", "demo-user", "the user who signs in")
	fs.StringVar(&password, "password", "demo-password", "the user's password")
	fs.DurationVar(&ttl, "token-ttl", time.Hour, "expires_in of the access tokens it issues")
	fs.DurationVar(&grace, "reuse-grace", 2*time.Second, "how long a rotated refresh token is still accepted")
	if _, err := parseWithSources(fs, args, noEnv); err != nil {
		return err
	}
	fake := oauthfake.New(clientID, clientSecret, user, password)
	fake.SetTokenTTL(ttl, false)
	fake.SetRotation(true, grace)
	fmt.Fprintf(stdout, "fake OAuth sign-in page: http://%s%s (user %q)\nfake OAuth token endpoint: http://%s%s (client id %q)\nfake OAuth API: http://%s%s\n",
		listen, oauthfake.AuthorizePath, user, listen, oauthfake.TokenPath, clientID, listen, oauthfake.APIPath)
	return serveFake(listen, logRequests(fake, fakeLog(stderr), clientSecret, password))
}

// fakeLog is the log of a stand-in, on w.
func fakeLog(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// serveFake serves a stand-in at listen until SIGINT or SIGTERM.
func serveFake(listen string, fake http.Handler) error {
	srv := &http.Server{Addr: listen, Handler: fake, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// newFlagSet makes a flag set whose help lists each flag's environment variable.
func newFlagSet(name string, out io.Writer, about string) *flag.FlagSet {
	return flagSet(name, "credbroker "+name+" [flags]", out, about, envName)
}

// toolFlagSet is newFlagSet for the tools that try the broker out
// (stand-ins, dev-certs, dev-etcd): their flags read no environment
// variable, so that a shell set up for serve (CREDBROKER_LISTEN, say)
// does not move them. Parse it with noEnv.
func toolFlagSet(name string, out io.Writer, about string) *flag.FlagSet {
	return flagSet(name, "credbroker "+name+" [flags]", out, about, noEnv)
}

// flagSet is a flag set whose help shows usage, about, and each flag with
// the environment variable env names for it.
func flagSet(name, usage string, out io.Writer, about string, env func(string) string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: %s\n\n%s\n\nFlags:\n", usage, about)
		printFlags(out, fs, env)
	}
	return fs
}

// noEnv names no environment variable for any flag.
func noEnv(string) string { return "" }

// printFlags lists fs's flags, with the environment variable env names
// for each (if any).
func printFlags(out io.Writer, fs *flag.FlagSet, env func(flag string) string) {
	fs.VisitAll(func(f *flag.Flag) {
		fmt.Fprintf(out, "  --%s", f.Name)
		if v := env(f.Name); v != "" {
			fmt.Fprintf(out, " (env %s)", v)
		}
		fmt.Fprintf(out, "\n    \t%s", f.Usage)
		if f.DefValue != "" {
			fmt.Fprintf(out, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(out)
	})
}

// parse sets each flag from the config file (if fs has --config), then from
// its environment variable, then from args, so a flag given on the command
// line wins. Arguments left after the flags fill positional in order.
func parse(fs *flag.FlagSet, args []string, positional ...*string) error {
	_, err := parseWithSources(fs, args, envName, positional...)
	return err
}

// parseWithSources is parse, with env naming each flag's environment
// variable ("" for none), also saying where each set flag's value came
// from.
func parseWithSources(fs *flag.FlagSet, args []string, env func(flag string) string, positional ...*string) (configSources, error) {
	sources := configSources{}
	if path := configPath(args); fs.Lookup(configFlag) != nil && path != "" {
		if err := applyConfigFile(fs, path, sources); err != nil {
			return nil, err
		}
	}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := env(f.Name)
		if v, ok := os.LookupEnv(name); ok && name != "" && err == nil {
			if serr := f.Value.Set(v); serr != nil {
				err = usagef(fs.Name(), "%s: %v", name, serr)
			}
			sources[f.Name] = "environment " + name
		}
	})
	if err != nil {
		return nil, err
	}
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	fs.Visit(func(f *flag.Flag) { sources[f.Name] = "command line" })
	rest := fs.Args()
	for _, p := range positional {
		if len(rest) > 0 {
			*p, rest = rest[0], rest[1:]
		}
	}
	if len(rest) > 0 {
		return nil, usagef(fs.Name(), "unexpected arguments: %s", strings.Join(rest, " "))
	}
	return sources, nil
}

// storageFlags are the flags that choose the storage engine and reach
// etcd, for serve and restore.
func storageFlags(fs *flag.FlagSet, cfg *datadir.Config, d datadir.Config) {
	fs.StringVar(&cfg.Storage, "storage", d.Storage, `where the broker keeps its state: "bbolt" (a database file in --data-dir, for one broker) or "etcd" (an etcd cluster that any number of replicas share; needs --etcd-endpoints and the same configured master key on every replica)`)
	fs.Var((*commaList)(&cfg.Etcd.Endpoints), "etcd-endpoints", "comma-separated client URLs of the etcd cluster's members, e.g. https://etcd-0:2379,https://etcd-1:2379,https://etcd-2:2379")
	fs.StringVar(&cfg.Etcd.Prefix, "etcd-prefix", d.Etcd.Prefix, "key prefix of everything the broker stores in etcd; brokers that share a cluster but not their accounts use different prefixes")
	fs.StringVar(&cfg.Etcd.CAFile, "etcd-ca", "", "PEM bundle of the CAs that verify the etcd members' certificates")
	fs.StringVar(&cfg.Etcd.CertFile, "etcd-cert", "", "PEM client certificate the broker presents to etcd; with --etcd-key")
	fs.StringVar(&cfg.Etcd.KeyFile, "etcd-key", "", "PEM private key of --etcd-cert")
}

// previousKeyFlag registers --previous-master-key-file, the key a database
// was under before a rotation (see rotate-master-key).
func previousKeyFlag(fs *flag.FlagSet, cfg *datadir.Config) {
	fs.StringVar(&cfg.PreviousMasterKeyFile, "previous-master-key-file", "", "during a master-key rotation, file holding the master key the database was under before (--master-key-file holds the new one); not needed once credbroker rotate-master-key has finished")
}

// masterKeysFromEnv reads the master keys given as text in the
// environment, never as flags, which ps would show.
func masterKeysFromEnv(cfg *datadir.Config) {
	cfg.MasterKey = os.Getenv(envPrefix + "MASTER_KEY")
	cfg.PreviousMasterKey = os.Getenv(envPrefix + "PREVIOUS_MASTER_KEY")
}

// commaList is a flag of comma-separated values, which --print-config
// shows as given.
type commaList []string

func (l *commaList) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(*l, ",")
}

func (l *commaList) Set(v string) error {
	*l = splitList(v)
	return nil
}

// splitList splits a comma-separated list, dropping blanks.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}
