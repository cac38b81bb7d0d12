package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// configFlag names the flag that points at a config file: a flat YAML map
// from flag names to values, e.g. "listen: 0.0.0.0:50051". A value comes
// from, in order of precedence: the command line, the environment
// (CREDBROKER_*), the config file, the default.
const configFlag = "config"

// configSources records where each flag's value came from, for
// --print-config.
type configSources map[string]string

// configPath is the config file named by args (--config FILE or
// --config=FILE, the last one wins) or else by CREDBROKER_CONFIG.
func configPath(args []string) string {
	path := os.Getenv(envName(configFlag))
	for i, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != configFlag {
			continue
		}
		if hasValue {
			path = value
		} else if i+1 < len(args) {
			path = args[i+1]
		}
	}
	return path
}

// applyConfigFile sets fs's flags from the config file at path.
func applyConfigFile(fs *flag.FlagSet, path string, sources configSources) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return &usageError{fmt.Sprintf("--config: %v", err)}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return &usageError{fmt.Sprintf("config file %s: %v", path, err)}
	}
	if len(doc.Content) == 0 {
		return nil // empty file
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return &usageError{fmt.Sprintf("config file %s: want a map of flag names to values, like \"listen: 127.0.0.1:50051\"", path)}
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		f := fs.Lookup(k.Value)
		switch {
		case f == nil || k.Value == configFlag:
			return &usageError{fmt.Sprintf("config file %s, line %d: %q is not a flag of this command (see --help)", path, k.Line, k.Value)}
		case v.Kind != yaml.ScalarNode:
			return &usageError{fmt.Sprintf("config file %s, line %d: %s must be a single value", path, k.Line, k.Value)}
		}
		if err := f.Value.Set(v.Value); err != nil {
			return &usageError{fmt.Sprintf("config file %s, line %d: %s: %v", path, k.Line, k.Value, err)}
		}
		sources[k.Value] = "config file"
	}
	return nil
}

// printConfigTo writes the effective configuration as a config file that
// serve accepts, each value with where it came from. Values are redacted
// where they could hold a secret; the master key itself is never a flag.
func printConfigTo(w io.Writer, fs *flag.FlagSet, sources configSources, masterKeySource string) error {
	var errs []error
	fmt.Fprintf(w, "# credbroker serve: effective configuration (command line > environment > config file > default)\n")
	fmt.Fprintf(w, "# master key: %s\n", masterKeySource)
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == configFlag || f.Name == "print-config" {
			return
		}
		src := sources[f.Name]
		if src == "" {
			src = "default"
		}
		_, err := fmt.Fprintf(w, "%s: %s  # %s\n", f.Name, strconv.Quote(redactURL(f.Value.String())), src)
		errs = append(errs, err)
	})
	return errors.Join(errs...)
}

// redactURL hides a password in a URL's user info (https://user:pass@host).
func redactURL(v string) string {
	u, err := url.Parse(v)
	if err != nil || u.User == nil || u.Host == "" {
		return v
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "REDACTED")
	}
	return u.String()
}
