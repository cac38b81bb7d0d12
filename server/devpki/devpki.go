// Package devpki makes a throwaway certificate authority and the server and
// client certificates signed by it, for trying mTLS on one machine
// (credbroker dev-certs), for tests and for benchmarks. Its keys are written
// unencrypted: never use it for anything real.
package devpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/credbroker/credbroker/server/internal/mtls"
)

// CA is a certificate authority.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// CertPEM is the CA certificate, for --client-ca and clients' root CAs.
	CertPEM []byte
}

// NewCA makes a CA valid for a year.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.AddDate(1, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Pool is a cert pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Leaf is an issued certificate with its key.
type Leaf struct {
	CertPEM, KeyPEM []byte
	TLS             tls.Certificate
}

// Identity says what a leaf certificate names. Zero NotBefore and NotAfter
// mean valid from now for a year.
type Identity struct {
	CommonName          string
	DNSNames            []string
	IPAddresses         []net.IP
	URIs                []string
	NotBefore, NotAfter time.Time
}

// ForPrincipal is the identity of a client certificate that proves
// principal: a URI SAN for a URI (e.g. a SPIFFE ID), a DNS SAN for
// "dns:<name>", a subject CN for "cn:<text>".
func ForPrincipal(principal string) (Identity, error) {
	if err := mtls.CheckPrincipal(principal); err != nil {
		return Identity{}, err
	}
	if name, ok := strings.CutPrefix(principal, mtls.DNSPrefix); ok {
		return Identity{DNSNames: []string{name}}, nil
	}
	if cn, ok := strings.CutPrefix(principal, mtls.CNPrefix); ok {
		return Identity{CommonName: cn}, nil
	}
	return Identity{URIs: []string{principal}}, nil
}

// Server issues a certificate for TLS servers.
func (ca *CA) Server(id Identity) (*Leaf, error) {
	return ca.issue(id, x509.ExtKeyUsageServerAuth)
}

// Client issues a certificate for TLS clients.
func (ca *CA) Client(id Identity) (*Leaf, error) {
	return ca.issue(id, x509.ExtKeyUsageClientAuth)
}

func (ca *CA) issue(id Identity, usage x509.ExtKeyUsage) (*Leaf, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if id.NotBefore.IsZero() {
		id.NotBefore = time.Now().Add(-time.Minute)
	}
	if id.NotAfter.IsZero() {
		id.NotAfter = time.Now().AddDate(1, 0, 0)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: id.CommonName},
		DNSNames:     id.DNSNames,
		IPAddresses:  id.IPAddresses,
		NotBefore:    id.NotBefore,
		NotAfter:     id.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	for _, u := range id.URIs {
		parsed, err := url.Parse(u)
		if err != nil {
			return nil, err
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	l := &Leaf{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	l.TLS, err = tls.X509KeyPair(l.CertPEM, l.KeyPEM)
	return l, err
}

// WriteFiles writes name.pem and name-key.pem (mode 0600) into dir.
func (l *Leaf) WriteFiles(dir, name string) error {
	return errors.Join(
		os.WriteFile(filepath.Join(dir, name+".pem"), l.CertPEM, 0o644),
		os.WriteFile(filepath.Join(dir, name+"-key.pem"), l.KeyPEM, 0o600),
	)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}
