package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// adminCommands are the commands for people that talk to a running broker:
// command, then subcommand, then its handler.
var adminCommands = map[string]map[string]func(*session, []string) error{
	"accounts": {"link": accountsLink, "list": accountsList, "get": accountsGet, "update": accountsUpdate, "delete": accountsDelete,
		"grant": accountsGrant, "ungrant": accountsUngrant, "add-secret": accountsAddSecret, "remove-secret": accountsRemoveSecret,
		"connect-link": accountsConnectLink},
	"callers":  {"create": callersCreate, "list": callersList, "revoke": callersRevoke, "delete": callersDelete},
	"admins":   {"list": adminsList, "add": adminsAdd, "remove": adminsRemove},
	"token":    {"get": tokenGet},
	"audit":    {"list": auditList},
	"webhooks": {"create": webhooksCreate, "list": webhooksList, "get": webhooksGet, "delete": webhooksDelete},
}

// runAdmin runs "credbroker COMMAND SUBCOMMAND [ARGS] [flags]".
func runAdmin(command string, args []string, stdout, stderr io.Writer) error {
	subs := adminCommands[command]
	if len(args) == 0 || subs[args[0]] == nil {
		names := make([]string, 0, len(subs))
		for name := range subs {
			names = append(names, name)
		}
		sort.Strings(names)
		if len(args) > 0 && (args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
			fmt.Fprintf(stdout, "Usage: credbroker %s {%s} --help\n", command, strings.Join(names, "|"))
			return flag.ErrHelp
		}
		if len(args) == 0 {
			return &usageError{fmt.Sprintf("%s needs a subcommand: one of %s (each has --help)", command, strings.Join(names, ", "))}
		}
		return &usageError{fmt.Sprintf("%s: unknown subcommand %q; choose one of: %s", command, args[0], strings.Join(names, ", "))}
	}
	return subs[args[0]](&session{name: command + " " + args[0], stdout: stdout, stderr: stderr}, args[1:])
}

// session is one run of an admin command: its flags, its connection to the
// broker and how it prints.
type session struct {
	name           string
	stdout, stderr io.Writer
	remote         remote
	client         *client.Client // set by parse
	usage, output  string
	// rejected names what to check when the provider rejects credentials;
	// denied, what to do when the caller lacks the right.
	rejected, denied string
}

// cliEnv names the environment variables of the admin commands' flags:
// only how to reach the broker, which identity to use and how to print,
// each with a name of the CLI's own (none is a serve variable; the
// address, caller key and CA are the clients' and examples' names too).
// A command's own flags have none.
func cliEnv(flag string) string { return cliEnvNames[flag] }

var cliEnvNames = map[string]string{
	"broker":          "CREDBROKER_ADDR",
	"caller-key-file": "CREDBROKER_CALLER_KEY_FILE",
	"tls-ca":          "CREDBROKER_TLS_CA",
	"tls-cert":        "CREDBROKER_CLIENT_CERT",
	"tls-key":         "CREDBROKER_CLIENT_KEY",
	"tls-server-name": "CREDBROKER_TLS_SERVER_NAME",
	"output":          "CREDBROKER_CLI_OUTPUT",
}

// flags is the command's flag set with the options every admin command has.
func (s *session) flags(usage, about string) *flag.FlagSet {
	s.usage = "credbroker " + s.name + " " + usage
	fs := remoteFlagSet(s.name, s.usage, s.stderr, about, &s.remote)
	fs.StringVar(&s.output, "output", "table", "table (for people) or json (for scripts)")
	return fs
}

// remoteFlagSet is the flag set of a command that reaches a running
// broker as r: r's flags, whose environment variables are the CLI's own
// (cliEnv). Parse it with parseRemote.
func remoteFlagSet(name, usage string, out io.Writer, about string, r *remote) *flag.FlagSet {
	fs := flagSet(name, usage, out, about, cliEnv)
	r.register(fs)
	return fs
}

// parseRemote is parse for a remoteFlagSet.
func parseRemote(fs *flag.FlagSet, args []string, positional ...*string) error {
	_, err := parseWithSources(fs, args, cliEnv, positional...)
	return err
}

// parse parses flags and the positional arguments, which may come before
// or after the flags; every positional argument is required. It also checks
// the identity options, before the command asks for any secret.
func (s *session) parse(fs *flag.FlagSet, args []string, positional ...*string) error {
	var missing []*string
	for _, p := range positional {
		if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			*p, args = args[0], args[1:]
		} else {
			missing = append(missing, p)
		}
	}
	if err := parseRemote(fs, args, missing...); err != nil {
		return err
	}
	if s.output != "table" && s.output != "json" {
		return usagef(s.name, "--output must be table or json, not %q", s.output)
	}
	for _, p := range positional {
		if *p == "" {
			return &usageError{"missing arguments; usage: " + s.usage}
		}
	}
	var err error
	s.client, err = s.remote.dial()
	return err
}

// call runs fn on the broker, with a time limit.
func (s *session) call(fn func(ctx context.Context, conn grpc.ClientConnInterface) error) error {
	defer s.client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return s.explain(fn(ctx, s.client.Conn()))
}

// print writes msg as JSON, or as the table the command draws.
func (s *session) print(msg proto.Message, table func(w io.Writer)) error {
	if s.output == "json" {
		out, err := protojson.Marshal(msg)
		var indented bytes.Buffer
		if err == nil {
			// protojson varies its spacing on purpose; json.Indent makes it stable.
			err = json.Indent(&indented, out, "", "  ")
		}
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(s.stdout, indented.String())
		return err
	}
	tw := tabwriter.NewWriter(s.stdout, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// allPages calls list with each page token in turn, from the first page
// to the last, or until it has limit items (0: no limit).
func allPages[T any](limit int, list func(pageToken string) ([]T, string, error)) ([]T, error) {
	var all []T
	for token := ""; ; {
		items, next, err := list(token)
		if err != nil {
			return nil, err
		}
		all = append(all, items...)
		if limit > 0 && len(all) >= limit {
			return all[:limit], nil
		}
		if token = next; token == "" {
			return all, nil
		}
	}
}

// fieldFlags names the command-line flag (or argument) of each request
// field an admin command fills from one, for the broker's refusals.
var fieldFlags = map[string]string{
	"account_id": "ID", "key_id": "ID", "name": "ID", "principal": "PRINCIPAL",
	"http_methods": "--method", "path_prefixes": "--path-prefix", "expire_time": "--expires", "display_name": "--display-name",
	"labels": "--label", "client_id": "--client-id", "org_id": "--org-id", "region": "--region", "token_url": "--token-url",
	"scopes": "--scopes", "description": "--description", "secret_id": "SECRET_ID",
}

// explain turns a broker's error into one that says what to do about it.
func (s *session) explain(err error) error {
	st, ok := status.FromError(err)
	if err == nil || !ok {
		return err
	}
	var info *errdetails.ErrorInfo
	var field string // the first field a BadRequest names
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 && field == "" {
			field = br.GetFieldViolations()[0].GetField()
		}
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	msg := st.Message()
	switch {
	case info != nil && info.GetReason() == credbrokerv1.ErrorReason_CREDENTIALS_REJECTED.String():
		what := strings.TrimSpace(info.GetMetadata()["provider_error"] + ": " + info.GetMetadata()["provider_error_description"])
		what = strings.Trim(what, ": ")
		if what == "" {
			what = msg
		}
		check := s.rejected
		if check == "" {
			check = "the account's credentials; an admin can add a new secret with: credbroker accounts add-secret"
		}
		return fmt.Errorf("credentials rejected by the provider (%s): check %s", what, check)
	case info != nil && info.GetReason() == credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE.String():
		return fmt.Errorf("the provider is unavailable: %s; the broker retries with backoff, try again shortly", msg)
	case info != nil && info.GetReason() == credbrokerv1.ErrorReason_RATE_LIMITED.String():
		return fmt.Errorf("%s: wait a moment and try again", msg)
	case info != nil:
		return fmt.Errorf("%s (%s)", msg, info.GetReason())
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded:
		return fmt.Errorf("cannot reach the broker at %s (%s): is it running, and are --broker and the TLS options right?", s.remote.addr, msg)
	case codes.Unauthenticated:
		return fmt.Errorf("the broker did not accept your identity (%s): set CREDBROKER_CALLER_KEY or --caller-key-file to a valid caller key, or use --tls-ca, --tls-cert and --tls-key", msg)
	case codes.PermissionDenied:
		if s.denied == "" {
			return fmt.Errorf("%s: this command needs an admin caller key or admin principal", msg)
		}
		return fmt.Errorf("%s: %s", msg, s.denied)
	case codes.InvalidArgument: // the command line, as typed
		if flag := fieldFlags[field[strings.LastIndex(field, ".")+1:]]; flag != "" {
			return &usageError{fmt.Sprintf("%s: invalid %s", flag, msg)}
		}
		return &usageError{"invalid " + msg}
	case codes.AlreadyExists:
		if strings.Contains(msg, "delete") {
			return errors.New(msg) // the broker says what to do
		}
		return fmt.Errorf("%s: choose another name, or delete the existing one first", msg)
	case codes.NotFound:
		return fmt.Errorf("%s (the list commands show what there is)", msg)
	}
	return fmt.Errorf("%s (%s)", msg, st.Code())
}

// readSecret reads a secret from the terminal without echo or, when input
// is not a terminal, from standard input; never from the command line,
// where ps and shell history would keep it.
func readSecret(stderr io.Writer, what string) (string, error) {
	fd := int(os.Stdin.Fd())
	var data []byte
	var err error
	if term.IsTerminal(fd) {
		fmt.Fprintf(stderr, "%s (not shown): ", what)
		data, err = term.ReadPassword(fd)
		fmt.Fprintln(stderr)
	} else {
		data, err = io.ReadAll(io.LimitReader(os.Stdin, 64<<10))
	}
	if err != nil {
		return "", fmt.Errorf("read the %s: %w", what, err)
	}
	secret := strings.TrimRight(string(data), "\r\n")
	if secret == "" {
		return "", fmt.Errorf("no %s given: type it at the prompt, or pipe it on standard input", what)
	}
	return secret, nil
}

// resourceName accepts "acme" or "accounts/acme".
func resourceName(collection, id string) string {
	if strings.HasPrefix(id, collection+"/") {
		return id
	}
	return collection + "/" + id
}

// enumValue reads a flag value such as "needs-attention" as the enum value
// prefix+"NEEDS_ATTENTION".
func enumValue(flagName, prefix, value string, values map[string]int32) (int32, error) {
	if value == "" {
		return 0, nil
	}
	if v, ok := values[prefix+strings.ToUpper(strings.ReplaceAll(value, "-", "_"))]; ok && v != 0 {
		return v, nil
	}
	var names []string
	for name, v := range values {
		if v != 0 {
			names = append(names, strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, prefix), "_", "-")))
		}
	}
	sort.Strings(names)
	return 0, &usageError{fmt.Sprintf("--%s must be one of %s, not %q", flagName, strings.Join(names, ", "), value)}
}

// enumText is an enum value as a person reads it: "needs-attention".
func enumText(prefix string, v fmt.Stringer) string {
	s := strings.TrimPrefix(v.String(), prefix)
	if s == "UNSPECIFIED" {
		return "-"
	}
	return strings.ToLower(strings.ReplaceAll(s, "_", "-"))
}

// when is a time for a table: UTC to the minute, and how far off it is.
func when(t *timestamppb.Timestamp, now time.Time) string {
	if t == nil {
		return "-"
	}
	at := t.AsTime()
	d := at.Sub(now).Round(time.Minute)
	rel := "in " + shortDuration(d)
	switch {
	case d == 0:
		rel = "now"
	case d < 0:
		rel = shortDuration(-d) + " ago"
	}
	return at.UTC().Format("2006-01-02 15:04 UTC") + " (" + rel + ")"
}

func shortDuration(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d >= time.Hour:
		return fmt.Sprintf("%dh%02dm", d/time.Hour, d%time.Hour/time.Minute)
	default:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
}

// labelsFlag collects repeated --label key=value flags.
type labelsFlag map[string]string

func (l labelsFlag) String() string { return "" }

func (l labelsFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not key=value", v)
	}
	l[k] = val
	return nil
}

// listFlag collects a repeatable flag's values; with split, each value may
// also be a comma-separated list.
type listFlag struct {
	values []string
	split  bool
}

func (l *listFlag) String() string { return "" }

func (l *listFlag) Set(v string) error {
	if l.split {
		l.values = append(l.values, strings.Split(v, ",")...)
	} else {
		l.values = append(l.values, v)
	}
	return nil
}

// sortedPairs is a map as "k=v, ..." in key order.
func sortedPairs(m map[string]string, sep string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(k + sep + m[k])
	}
	if b.Len() == 0 {
		return "-"
	}
	return b.String()
}

// dash shows an empty field in a table.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
