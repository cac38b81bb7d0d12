package datadir

import (
	"strings"
	"time"

	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/mtls"
	"github.com/credbroker/credbroker/server/internal/store"
)

// typePrincipals types, once per database, the principals of account
// grants and admin principals stored by builds that took a certificate's
// principal untyped: its URI SAN, DNS SAN or CN as it was.
func typePrincipals(st *store.Store) error {
	_, err := st.TypePrincipals(typedPrincipals, audit.Own(time.Now(), "type_principals", "",
		`grants and admin principals stored untyped now name where a certificate's principal comes from: P became "cn:P", and also "dns:P" if P is a DNS name; URIs and caller keys are unchanged`))
	return err
}

// typedPrincipals are the principals that prove exactly what a principal
// stored by an earlier build proved. A URI or a caller key stays as it is.
// Any other principal P was proven by a DNS SAN or a subject CN equal to
// P, so it becomes "cn:P", plus "dns:P" if P can be a DNS SAN. (A CN
// spelled like a URI no longer proves that URI: that confusion is what
// typing removes.)
func typedPrincipals(p string) []string {
	if strings.HasPrefix(p, callers.KeyPrincipalPrefix) || mtls.IsURIPrincipal(p) {
		return []string{p}
	}
	typed := []string{mtls.CNPrefix + p}
	if mtls.ValidDNSName(p) {
		typed = append(typed, mtls.DNSPrefix+p)
	}
	return typed
}
