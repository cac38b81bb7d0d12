package gate

import (
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/mtls"
)

// Authorize admits an HTTP request as a call to method, which needs access
// a (Caller or Admin): the caller proves its identity with a
// caller key sent as "Bearer <key>" in the header keyHeader, or else with
// its connection's client certificate. resource names what the call is
// about, in its audit event whether or not it is admitted. The handler
// completes the call (refusing it, or adding what it did) and ends it with
// Finish, or FinishAnswered once its answer has gone, in either case.
func (g *Gate) Authorize(r *http.Request, method string, a Access, keyHeader, resource string) (*Call, error) {
	c := g.begin(method, r.RemoteAddr, a)
	c.Resource = resource
	return c, g.admit(c, r.Header.Get(keyHeader), func(now time.Time) (string, error) { return g.certs.Principal(r, now) })
}

// AuthorizeKey is Authorize for a caller key given in the request's body
// (the Hub's sign-in form) rather than a header.
func (g *Gate) AuthorizeKey(r *http.Request, method string, a Access, key, resource string) (*Call, error) {
	c := g.begin(method, r.RemoteAddr, a)
	c.Resource = resource
	return c, g.admitAs(c, func() (callers.Identity, error) { return g.authenticate("Bearer "+key, noCertificate, c.Time) })
}

// AuthorizeSession is Authorize for a principal that proved itself when
// it signed in to the Hub: its identity as it stands now (a revoked or
// expired key, a principal no longer admin, is refused).
func (g *Gate) AuthorizeSession(r *http.Request, method string, a Access, principal, resource string) (*Call, error) {
	c := g.begin(method, r.RemoteAddr, a)
	c.Resource = resource
	return c, g.admitAs(c, func() (callers.Identity, error) {
		id, err := g.callers.PrincipalIdentity(principal)
		if err != nil {
			return id, status.Error(codes.Unauthenticated, err.Error())
		}
		return id, nil
	})
}

// AuthorizeLink admits a request made with a connect link as a call to
// method, which open proves: it returns the link's principal, or why the
// link cannot be used. A link that fails is charged to the peer address's
// budget of failed credentials, as a wrong key is, so that links cannot
// be guessed.
func (g *Gate) AuthorizeLink(r *http.Request, method string, open func() (string, error)) (*Call, error) {
	c := g.begin(method, r.RemoteAddr, Caller)
	c.budget = "links:"
	return c, g.admitAs(c, func() (callers.Identity, error) {
		principal, err := open()
		return callers.Identity{Principal: principal}, err
	})
}

// Unavailable is why calls are refused at once now (see
// Config.Unavailable), or nil: pages check it before they read anything.
func (g *Gate) Unavailable() error { return g.unavailable() }

// noCertificate is the certificate principal of a call that presents none.
func noCertificate(time.Time) (string, error) { return "", mtls.ErrNoCertificate }
