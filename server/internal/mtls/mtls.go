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
	"sync"
	"time"

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
	p := principal(leaf)
	if p == "" {
		return "", time.Time{}, errors.New("client certificate names no principal: it needs a URI SAN, a DNS SAN or a subject CN")
	}
	return p, leaf.NotAfter, nil
}

// principal is the certificate's URI SAN (e.g. a SPIFFE ID), else its first
// DNS SAN, else its subject CN.
func principal(c *x509.Certificate) string {
	switch {
	case len(c.URIs) > 0:
		return c.URIs[0].String()
	case len(c.DNSNames) > 0:
		return c.DNSNames[0]
	}
	return c.Subject.CommonName
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
