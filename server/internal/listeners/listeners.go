// Package listeners owns the broker's listeners apart from what they
// serve: the rule that plaintext is served on loopback addresses only, the
// TLS material every listener serves (the broker's certificate and the
// CAs of client certificates), the transport credentials of the gRPC
// server, and the HTTP servers beside it (the egress proxy, the ops
// listener, and any later one): opened, served, shut down and closed.
package listeners

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/credbroker/credbroker/internal/loopback"
	"github.com/credbroker/credbroker/server/internal/mtls"
)

// Off as the address of an optional listener turns it off.
const Off = "off"

// Addr is a listen address and the flag that sets it, which errors name.
type Addr struct {
	Flag, Addr string
	// Optional: the listener may be Off.
	Optional bool
}

// TLS is what the listeners serve: a certificate (nil for plaintext) and
// the CAs of accepted client certificates (nil for none).
type TLS struct {
	Cert      *tls.Certificate
	ClientCAs *x509.CertPool
}

// LoadTLS checks the listen addresses, allowing plaintext on loopback ones
// only, and reads the TLS files: a PEM certificate and key (neither, for
// plaintext) and a PEM bundle of client CAs (none for no mTLS).
func LoadTLS(certFile, keyFile, clientCAFile string, addrs ...Addr) (TLS, error) {
	plaintext := certFile == "" && keyFile == ""
	if plaintext && clientCAFile != "" {
		return TLS{}, errors.New("a client CA (mTLS) needs TLS: set --tls-cert and --tls-key too")
	}
	for _, a := range addrs {
		if a.Optional && a.Addr == Off {
			continue
		}
		if err := checkAddr(a, plaintext); err != nil {
			return TLS{}, err
		}
	}
	if plaintext {
		return TLS{}, nil
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return TLS{}, fmt.Errorf("--tls-cert, --tls-key: the TLS certificate and key: %w", err)
	}
	if clientCAFile == "" {
		return TLS{Cert: &cert}, nil
	}
	pem, err := os.ReadFile(clientCAFile)
	if err != nil {
		return TLS{}, fmt.Errorf("--client-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return TLS{}, fmt.Errorf("client CA %s holds no PEM certificate", clientCAFile)
	}
	return TLS{Cert: &cert, ClientCAs: pool}, nil
}

// checkAddr checks a listen address's form and, for plaintext, refuses any
// address that is not loopback: caller keys and tokens would cross the
// network readable by anyone on the path.
func checkAddr(a Addr, plaintext bool) error {
	host, _, err := net.SplitHostPort(a.Addr)
	if err != nil {
		return fmt.Errorf("%s %q: %w", a.Flag, a.Addr, err)
	}
	if !plaintext || loopback.Host(host) {
		return nil
	}
	return fmt.Errorf("%s %q is not a loopback address, so it requires TLS: set --tls-cert and --tls-key (plaintext is served only on 127.0.0.1, ::1 or localhost)", a.Flag, a.Addr)
}

// GRPCCredentials is TLS (with client-certificate principals when there
// are client CAs), or plaintext.
func (t TLS) GRPCCredentials() credentials.TransportCredentials {
	if t.Cert == nil {
		return insecure.NewCredentials()
	}
	return mtls.ServerCredentials(*t.Cert, t.ClientCAs)
}

// Bind opens the TCP listener at addr that the flag named flag sets, or
// says what stands in the way, naming the flag.
func Bind(flag, addr string) (net.Listener, error) {
	lis, err := net.Listen("tcp", addr)
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return nil, fmt.Errorf("--%s %s: the address is in use, by another program or another credbroker; stop it, or choose another address with --%s", flag, addr, flag)
	case errors.Is(err, syscall.EACCES):
		return nil, fmt.Errorf("--%s %s: not allowed to listen there (ports below 1024 need privileges); choose another address with --%s", flag, addr, flag)
	case err != nil:
		return nil, fmt.Errorf("--%s %s: %w", flag, addr, err)
	}
	return lis, nil
}

// Close closes lis unless it is closed already (a server closes its
// listener when it stops).
func Close(lis net.Listener) error {
	if err := lis.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// AuthSummary says, for the start-up log, how callers prove who they are
// to listeners with the certificate certFile and the client CAs
// clientCAFile (either may be empty).
func AuthSummary(certFile, clientCAFile string) string {
	switch {
	case clientCAFile != "":
		return "TLS; client certificates signed by " + clientCAFile + ", or caller keys"
	case certFile != "":
		return "TLS; caller keys"
	}
	return "plaintext on loopback; caller keys"
}
