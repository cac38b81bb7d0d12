// Package mtls proves callers' identities from client certificates, for
// the gRPC server and for the egress proxy's HTTP server. The
// TLS handshake asks for a certificate but does not refuse a connection
// without a valid one: the certificate is verified here, once per
// connection, and a call on a connection whose certificate failed gets a
// clear UNAUTHENTICATED answer naming the problem instead of a bare
// handshake error. Callers without a certificate may still use caller keys.
package mtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// ErrNoCertificate means the caller sent no client certificate.
var ErrNoCertificate = errors.New("no client certificate")

// ServerCredentials serves TLS with cert. With clientCAs, client
// certificates signed by them prove the caller's principal (see Principal).
func ServerCredentials(cert tls.Certificate, clientCAs *x509.CertPool) credentials.TransportCredentials {
	cfg := ServerTLSConfig(cert, clientCAs != nil)
	if clientCAs == nil {
		return credentials.NewTLS(cfg)
	}
	return &verifying{TransportCredentials: credentials.NewTLS(cfg), roots: clientCAs}
}

// ServerTLSConfig serves cert and, with requestCert, asks for (but does not
// require or verify) a client certificate.
func ServerTLSConfig(cert tls.Certificate, requestCert bool) *tls.Config {
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if requestCert {
		cfg.ClientAuth = tls.RequestClientCert
	}
	return cfg
}

// verifying checks each connection's client certificate after the handshake.
type verifying struct {
	credentials.TransportCredentials
	roots *x509.CertPool
}

// authInfo is a connection's TLS state with the outcome of verifying its
// client certificate.
type authInfo struct {
	credentials.TLSInfo
	verified
}

// verified is the outcome of verifying a connection's client certificate.
type verified struct {
	principal string
	notAfter  time.Time
	err       error
}

// at is the principal the certificate proves at time now.
func (v *verified) at(now time.Time) (string, error) {
	if v.err != nil {
		return "", v.err
	}
	if now.After(v.notAfter) { // the connection outlived its certificate
		return "", errors.New("client certificate expired during the connection; reconnect with a current one")
	}
	return v.principal, nil
}

func (v *verifying) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := v.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return conn, info, err
	}
	tlsInfo := info.(credentials.TLSInfo)
	ai := &authInfo{TLSInfo: tlsInfo}
	ai.principal, ai.notAfter, ai.err = verify(tlsInfo.State.PeerCertificates, v.roots, time.Now())
	return conn, ai, nil
}

func (v *verifying) Clone() credentials.TransportCredentials {
	return &verifying{TransportCredentials: v.TransportCredentials.Clone(), roots: v.roots}
}

func verify(chain []*x509.Certificate, roots *x509.CertPool, now time.Time) (string, time.Time, error) {
	if len(chain) == 0 {
		return "", time.Time{}, ErrNoCertificate
	}
	leaf := chain[0]
	opts := x509.VerifyOptions{
		Roots:         roots,
		Intermediates: x509.NewCertPool(),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(opts); err != nil {
		var invalid x509.CertificateInvalidError
		var unknown x509.UnknownAuthorityError
		switch {
		case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
			return "", time.Time{}, fmt.Errorf("client certificate is expired or not yet valid (valid %s to %s)",
				leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
		case errors.As(err, &unknown):
			return "", time.Time{}, errors.New("client certificate is not signed by the broker's client CA")
		}
		return "", time.Time{}, fmt.Errorf("client certificate not accepted: %v", err)
	}
	p, err := principal(leaf)
	if err != nil {
		return "", time.Time{}, err
	}
	return p, leaf.NotAfter, nil
}

// Principals are typed by where they come from. A certificate proves its
// first URI SAN as it is (e.g. the SPIFFE ID "spiffe://example.org/billing"),
// else "dns:" and its first DNS SAN, else "cn:" and its subject CN. Each
// source has its own namespace, so a CN or DNS SAN spelled like a SPIFFE ID
// proves nothing granted to the SPIFFE ID, and no certificate proves an
// untyped name such as the broker's own ("credbroker") in the audit trail.
const (
	DNSPrefix = "dns:"
	CNPrefix  = "cn:"
)

// MaxName bounds a URI principal and the text of a CN principal.
const MaxName = 512

// reservedSchemes cannot be the scheme of a URI principal: "dns" and "cn"
// are the other sources' namespaces, and "unix-uid" names the local
// operator of offline jobs (rekey) in the audit trail.
var reservedSchemes = map[string]bool{"dns": true, "cn": true, "unix-uid": true}

// principal is the principal the certificate proves, or why it proves none.
func principal(c *x509.Certificate) (string, error) {
	switch {
	case len(c.URIs) > 0:
		p := c.URIs[0].String()
		if checkURI(p) != nil {
			return "", fmt.Errorf("client certificate's first URI SAN %.200q is not a principal: it must be an absolute URI with a scheme other than dns, cn or unix-uid, such as spiffe://example.org/billing, of at most %d printable characters", p, MaxName)
		}
		return p, nil
	case len(c.DNSNames) > 0:
		return DNSPrefix + c.DNSNames[0], nil
	case c.Subject.CommonName != "":
		return CNPrefix + c.Subject.CommonName, nil
	}
	return "", errors.New("client certificate names no principal: it needs a URI SAN, a DNS SAN or a subject CN")
}

// CheckPrincipal says why p is not a principal that a client certificate
// can prove, or returns nil. Its message names the typed forms.
func CheckPrincipal(p string) error {
	if name, ok := strings.CutPrefix(p, DNSPrefix); ok {
		if !ValidDNSName(name) {
			return errors.New(`"dns:" must be followed by a DNS name: letters, digits, '-' and '_' in dot-separated labels of 1-63 characters, at most 253 in all`)
		}
		return nil
	}
	if cn, ok := strings.CutPrefix(p, CNPrefix); ok {
		if cn == "" || len(cn) > MaxName || !printable(cn) {
			return fmt.Errorf(`"cn:" must be followed by a subject CN of 1-%d bytes of printable text`, MaxName)
		}
		return nil
	}
	return checkURI(p)
}

// checkURI says why p is not a URI principal, or returns nil.
func checkURI(p string) error {
	if p == "" || len(p) > MaxName || !printable(p) || strings.Contains(p, " ") {
		return fmt.Errorf("must be 1-%d printable characters without spaces", MaxName)
	}
	if IsURIPrincipal(p) {
		return nil
	}
	if u, err := url.Parse(p); err == nil && reservedSchemes[u.Scheme] {
		return fmt.Errorf(`%q: the URI scheme %q is reserved; a DNS SAN is written "dns:<name>" and a subject CN "cn:<text>", in lowercase`, p, u.Scheme)
	}
	return fmt.Errorf(`%q is not typed: use "dns:%s" for a DNS SAN or "cn:%s" for a subject CN; a URI SAN (an absolute URI with a scheme, such as the SPIFFE ID "spiffe://example.org/billing") is used as it is`, p, p, p)
}

// IsURIPrincipal says whether p is an absolute URI whose scheme is not
// reserved: the principal of a URI SAN.
func IsURIPrincipal(p string) bool {
	u, err := url.Parse(p)
	return err == nil && u.Scheme != "" && !reservedSchemes[u.Scheme] && len(p) > len(u.Scheme)+1
}

// ValidDNSName accepts letters, digits, '-' and '_' in dot-separated labels
// of 1-63 characters, at most 253 characters in all.
func ValidDNSName(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// printable: valid UTF-8 of printable characters (no control, format or
// non-ASCII space characters).
func printable(s string) bool {
	return utf8.ValidString(s) && strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) < 0
}

// Principal returns the principal proven by the call's client certificate,
// ErrNoCertificate if there is none, or why the certificate is not accepted.
func Principal(ctx context.Context, now time.Time) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", ErrNoCertificate
	}
	ai, ok := p.AuthInfo.(*authInfo)
	if !ok {
		return "", ErrNoCertificate
	}
	return ai.at(now)
}

// HTTPVerifier proves principals from the client certificates of an
// http.Server's connections, verifying each connection's certificate once.
// Install its ConnContext in the server.
type HTTPVerifier struct{ roots *x509.CertPool }

// NewHTTPVerifier accepts client certificates signed by clientCAs; with
// nil, none.
func NewHTTPVerifier(clientCAs *x509.CertPool) *HTTPVerifier { return &HTTPVerifier{roots: clientCAs} }

type connKey struct{}

// connVerification is one connection's verification, done on its first request.
type connVerification struct {
	once sync.Once
	verified
}

// ConnContext gives each connection a place for its verification.
func (v *HTTPVerifier) ConnContext(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, &connVerification{})
}

// Principal returns the principal proven by the request's client
// certificate, ErrNoCertificate if there is none, or why it is not accepted.
func (v *HTTPVerifier) Principal(r *http.Request, now time.Time) (string, error) {
	cv, ok := r.Context().Value(connKey{}).(*connVerification)
	if v.roots == nil || r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || !ok {
		return "", ErrNoCertificate
	}
	cv.once.Do(func() {
		cv.principal, cv.notAfter, cv.err = verify(r.TLS.PeerCertificates, v.roots, time.Now())
	})
	return cv.at(now)
}
