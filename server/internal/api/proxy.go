package api

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/grants"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/proxy"
	"github.com/credbroker/credbroker/server/internal/store"
)

// ProxyMethod is the audit trail's method for egress-proxy calls.
const ProxyMethod = "proxy"

// proxyKeyHeader carries a caller key on the egress proxy. The caller's
// Authorization header is the API's business, and is stripped.
const proxyKeyHeader = "Proxy-Authorization"

// proxyHandler is the egress proxy: the gRPC API's authentication, rate
// limits, grants and audit trail, then package proxy forwards the call.
type proxyHandler struct {
	gate   *gate.Gate
	audit  *audit.Log
	grants *grants.Index
	fwd    *proxy.Forwarder
	errs   errorMapper
}

func (h *proxyHandler) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	// The answer streams to the caller but for its end, which goes once
	// the call's audit event is durable: no caller holds a whole answer
	// whose event a crash could lose.
	w := &holdBack{w: rw}
	pc := &proxy.Call{}
	id, path, perr := proxy.ParsePath(r.URL.EscapedPath())
	resource := "" // named in the audit event of a refused call too
	if validAccountID(id) {
		resource = accountPrefix + id
	}
	// The audit trail shows the API's path (after .../proxy) of every
	// call, allowed or refused, and the whole path only of one that has no
	// such form.
	auditPath := r.URL.EscapedPath()
	if path != "" {
		auditPath = path
	}
	c, err := h.gate.Authorize(r, ProxyMethod, gate.Caller, proxyKeyHeader, resource)
	if err == nil {
		err = h.route(c, pc, r, id, path, perr)
	}
	if err == nil && h.audit.Failing() {
		// A proxied call is audited when it ends; if that cannot be
		// written, it must not be forwarded at all. Its own refusal is
		// recorded below, and a success lets the next call through.
		err = audit.ErrNotForwarded
	}
	if err == nil {
		h.fwd.Forward(w, r, pc)
		switch {
		case pc.Err != nil:
			err = h.errs.toCallerStatus(r.Context(), pc.Err)
		case pc.Aborted != nil:
			// The API's status has gone to the caller, but the call failed.
			err = h.errs.toStatus(r.Context(), pc.Aborted)
			c.Detail = fmt.Sprintf("the answer was cut off after %d bytes: %s", pc.ResponseBytes, status.Convert(err).Message())
		}
	}
	c.Proxy = &store.ProxyCall{
		HTTPMethod: gate.Truncate(r.Method, 16), Path: gate.Truncate(auditPath, gate.MaxAuditResource),
		Status: pc.Status, RequestBytes: pc.RequestBytes, ResponseBytes: pc.ResponseBytes,
	}
	if err != nil && pc.Aborted == nil {
		writeProxyError(w, proxyHTTPStatus(pc.Err, status.Code(err)), status.Convert(err))
	}
	if h.gate.FinishAnswered(c, err) != nil {
		h.errs.log.Error("the audit event of a proxied call could not be written", "principal", c.Principal, "resource", c.Resource, "forwarded", pc.Status != 0)
		if pc.Status != 0 {
			// The API answered, but the caller must not take the answer
			// for a whole one: the call could not be audited. (A call
			// refused before it was forwarded did nothing: its refusal
			// goes out.)
			panic(http.ErrAbortHandler)
		}
	}
	if pc.Aborted != nil {
		panic(http.ErrAbortHandler) // the caller must not take a cut-off answer for a whole one
	}
	w.release()
}

// holdBack passes an answer on but for its last byte or, if it has no
// body, its header: release sends that. Until then the caller cannot
// have the whole answer (its length, or the end of its chunks, says more
// is coming). Informational (1xx) headers go at once.
type holdBack struct {
	w      http.ResponseWriter
	status int // the status WriteHeader was given, while it is held
	sent   bool
	last   []byte // the held byte, if any
}

func (h *holdBack) Header() http.Header { return h.w.Header() }

func (h *holdBack) WriteHeader(code int) {
	if code < 200 {
		h.w.WriteHeader(code)
	} else if h.status == 0 {
		h.status = code
	}
}

func (h *holdBack) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	h.sendHeader()
	if len(h.last) > 0 {
		if _, err := h.w.Write(h.last); err != nil {
			return 0, err
		}
	}
	if _, err := h.w.Write(p[:len(p)-1]); err != nil {
		return 0, err
	}
	h.last = append(h.last[:0], p[len(p)-1])
	return len(p), nil
}

// FlushError flushes what has been passed on (for streamed answers).
func (h *holdBack) FlushError() error {
	if !h.sent {
		return nil
	}
	return http.NewResponseController(h.w).Flush()
}

func (h *holdBack) sendHeader() {
	if !h.sent {
		h.sent = true
		h.w.WriteHeader(cmp.Or(h.status, http.StatusOK))
	}
}

// release sends what was held back.
func (h *holdBack) release() {
	h.sendHeader()
	if len(h.last) > 0 {
		_, _ = h.w.Write(h.last) // the caller gone: nothing to tell
	}
}

// route checks the parsed path and the caller's grant for its account,
// with the grant's limits.
func (h *proxyHandler) route(c *gate.Call, pc *proxy.Call, r *http.Request, id, path string, parseErr error) error {
	if parseErr != nil {
		return invalidArgument("path", parseErr.Error())
	}
	if c.Resource == "" {
		return invalidArgument("path", "the account id must be 1-63 lowercase letters, digits and hyphens")
	}
	pc.AccountID, pc.Path = id, path
	limits, ok := h.grants.Lookup(id, c.Principal)
	overridden := len(limits.Methods) > 0 && namesAMethod(r)
	c.Refused = !ok || !limits.Allows(r.Method, path) || overridden
	if !ok {
		// The same answer whether or not the account exists.
		return grants.NoGrant(c.Principal, c.Resource)
	}
	if c.Refused {
		c.Detail = "outside the grant's limits: " + limits.String()
		return grants.OutsideLimits(c.Principal, c.Resource, limits)
	}
	return nil
}

// namesAMethod reports whether a request carries a header or query
// parameter whose name mentions a method (X-HTTP-Method-Override,
// X_HTTP_METHOD_OVERRIDE, X-Original-Method, _method, ...): some APIs take
// the request for one of that method, so under a grant limited to some
// methods such a call is refused, and a GET cannot become a DELETE.
func namesAMethod(r *http.Request) bool {
	mentions := func(name string) bool { return strings.Contains(strings.ToLower(name), "method") }
	for name := range r.Header {
		if mentions(name) {
			return true
		}
	}
	for name := range r.URL.Query() {
		if mentions(name) {
			return true
		}
	}
	return false
}

// proxyHTTPStatus is the HTTP status of the proxy's own error answers: the
// usual mapping of gRPC codes, except where HTTP has a closer word.
func proxyHTTPStatus(err error, code codes.Code) int {
	var tooLarge *proxy.TooLargeError
	var upstream *proxy.UpstreamError
	switch {
	case errors.Is(err, proxy.ErrMethod):
		return http.StatusMethodNotAllowed
	case errors.As(err, &tooLarge) && tooLarge.What == "request":
		return http.StatusRequestEntityTooLarge
	case errors.As(err, &tooLarge):
		return http.StatusBadGateway
	case errors.As(err, &upstream) && upstream.Timeout():
		return http.StatusGatewayTimeout
	case errors.As(err, &upstream):
		return http.StatusBadGateway
	}
	return httpStatusOf[code]
}

// httpStatusOf maps gRPC codes to HTTP as google.rpc.Code documents.
var httpStatusOf = map[codes.Code]int{
	codes.OK: http.StatusOK, codes.Canceled: 499, codes.Unknown: http.StatusInternalServerError,
	codes.InvalidArgument: http.StatusBadRequest, codes.DeadlineExceeded: http.StatusGatewayTimeout,
	codes.NotFound: http.StatusNotFound, codes.AlreadyExists: http.StatusConflict,
	codes.PermissionDenied: http.StatusForbidden, codes.Unauthenticated: http.StatusUnauthorized,
	codes.ResourceExhausted: http.StatusTooManyRequests, codes.FailedPrecondition: http.StatusBadRequest,
	codes.Aborted: http.StatusConflict, codes.OutOfRange: http.StatusBadRequest,
	codes.Unimplemented: http.StatusNotImplemented, codes.Internal: http.StatusInternalServerError,
	codes.Unavailable: http.StatusServiceUnavailable, codes.DataLoss: http.StatusInternalServerError,
}

// proxyErrorHeader marks the proxy's own error answers, so that callers can
// tell them from the API's; its value is the gRPC code name.
const proxyErrorHeader = "Credbroker-Error"

// writeProxyError answers with the JSON error format of Google's HTTP APIs:
// {"error": {"code": 403, "status": "PERMISSION_DENIED", "message": ..., "details": [...]}}.
func writeProxyError(w http.ResponseWriter, httpStatus int, st *status.Status) {
	details := []json.RawMessage{}
	for _, d := range st.Proto().GetDetails() {
		if raw, err := protojson.Marshal(d); err == nil {
			details = append(details, raw)
		}
		if retry := retryDelay(d); retry > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(retry.Round(time.Second)/time.Second)))
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(proxyErrorHeader, grpcerr.CodeName(st.Code()))
	w.WriteHeader(httpStatus)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"code": httpStatus, "status": grpcerr.CodeName(st.Code()), "message": st.Message(), "details": details,
	}})
}

func retryDelay(d *anypb.Any) time.Duration {
	var ri errdetails.RetryInfo
	if d.UnmarshalTo(&ri) != nil {
		return 0
	}
	return max(time.Second, ri.GetRetryDelay().AsDuration())
}
