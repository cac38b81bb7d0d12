package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/credbroker/credbroker/client"
)

// remote is how a command reaches a running broker, with the identities
// any client has: a caller key (from CREDBROKER_CALLER_KEY or a file, never
// a flag value, which ps would show) and/or a client certificate.
type remote struct {
	addr, keyFile, caFile, certFile, certKeyFile, serverName string
}

func (r *remote) register(fs *flag.FlagSet) {
	fs.StringVar(&r.addr, "broker", "127.0.0.1:50051", "the broker's gRPC address")
	fs.StringVar(&r.keyFile, "caller-key-file", "", "file holding the caller key (else CREDBROKER_CALLER_KEY)")
	fs.StringVar(&r.caFile, "tls-ca", "", "PEM bundle of CAs that sign the broker's certificate; connects over TLS (needed off loopback)")
	fs.StringVar(&r.certFile, "tls-cert", "", "PEM client certificate proving your principal (mTLS); needs --tls-ca")
	fs.StringVar(&r.certKeyFile, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&r.serverName, "tls-server-name", "", "name to verify the broker's certificate against, if not the host of --broker")
}

// dial returns a client for the broker; it does not connect yet.
func (r *remote) dial() (*client.Client, error) {
	key := os.Getenv(envPrefix + "CALLER_KEY")
	if r.keyFile != "" {
		if key != "" {
			return nil, &usageError{"set either --caller-key-file or CREDBROKER_CALLER_KEY, not both"}
		}
		data, err := os.ReadFile(r.keyFile)
		if err != nil {
			return nil, &usageError{fmt.Sprintf("--caller-key-file: %v", err)}
		}
		key = strings.TrimSpace(string(data))
	}
	var opts []client.Option
	if key != "" {
		opts = append(opts, client.WithCallerKey(key))
	}
	switch {
	case r.caFile != "":
		pem, err := os.ReadFile(r.caFile)
		if err != nil {
			return nil, &usageError{fmt.Sprintf("--tls-ca: %v", err)}
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, &usageError{fmt.Sprintf("--tls-ca %s holds no PEM certificate", r.caFile)}
		}
		cfg := &tls.Config{RootCAs: roots, ServerName: r.serverName, MinVersion: tls.VersionTLS12}
		if r.certFile != "" || r.certKeyFile != "" {
			cert, err := tls.LoadX509KeyPair(r.certFile, r.certKeyFile)
			if err != nil {
				return nil, &usageError{fmt.Sprintf("--tls-cert, --tls-key: %v", err)}
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, client.WithTLS(cfg))
	case r.certFile != "" || r.certKeyFile != "":
		return nil, &usageError{"--tls-cert needs --tls-ca, to verify the broker"}
	case key == "":
		return nil, errors.New("no identity: set CREDBROKER_CALLER_KEY (or --caller-key-file), or use a client certificate (--tls-ca, --tls-cert, --tls-key)")
	}
	return client.New(r.addr, opts...)
}
