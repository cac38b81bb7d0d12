package gate

import (
	"net/http"
	"time"
)

// Authorize admits an HTTP request as a call to method, which needs access
// a (Proven, Caller or Admin): the caller proves its identity with a
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
