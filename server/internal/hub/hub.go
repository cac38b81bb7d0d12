// Package hub is the broker's web UI for admins: server-rendered pages
// (html/template, files embedded in the binary, no script but a copy
// button's) on a listener of their own. An admin signs in with an admin
// caller key, which the Hub exchanges for a session: a random secret in
// an HttpOnly, SameSite=Strict cookie (Secure under TLS), stored by the
// broker under a keyed hash of it, so that it lasts across replicas and
// ends on sign-out, on a new sign-in, at its expiry, or when the key is
// revoked. Every request passes the same gate as the API (identity as it
// stands now, role, rate limit, audit event naming the signed-in
// principal), and pages call the API's own handlers, in-process, so that
// they check and change exactly what the API does; every form carries a
// token bound to the session against cross-site requests, and every page
// is sent with a strict Content-Security-Policy and may not be framed.
package hub

import (
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/server/internal/api"
	"github.com/credbroker/credbroker/server/internal/connect"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/signin"
	"github.com/credbroker/credbroker/server/internal/store"
)

//go:embed templates/*.html static/*
var files embed.FS

var pages = template.Must(template.New("").Funcs(template.FuncMap{"field": field, "span": span}).ParseFS(files, "templates/*.html"))

// span says a duration in words: "1 hour", "30 minutes", "7 days".
func span(d time.Duration) string {
	for _, u := range []struct {
		d    time.Duration
		name string
	}{{24 * time.Hour, "day"}, {time.Hour, "hour"}, {time.Minute, "minute"}} {
		if d >= u.d && d%u.d == 0 {
			if n := int(d / u.d); n != 1 {
				return fmt.Sprintf("%d %ss", n, u.name)
			}
			return "1 " + u.name
		}
	}
	return d.String()
}

// fieldMsg is a form field's error, as the "ferr" template shows it.
type fieldMsg struct{ Name, Msg string }

func field(errs map[string]string, name string) fieldMsg {
	return fieldMsg{Name: name, Msg: errs[name]}
}

// Config tunes the Hub. Zero fields take the values of DefaultConfig.
type Config struct {
	// SessionTTL is how long a sign-in lasts.
	SessionTTL time.Duration
	Logger     *slog.Logger
	// Now is the clock of sessions.
	Now func() time.Time
	// ExpiryWarning is how long before its secrets expire an account's
	// expiry is shown as a countdown (the broker's --secret-expiry-warning).
	ExpiryWarning time.Duration
}

// DefaultConfig: sessions of an hour.
func DefaultConfig() Config {
	return Config{SessionTTL: time.Hour, Logger: slog.Default(), Now: time.Now, ExpiryWarning: 7 * 24 * time.Hour}
}

// maxSessionTTL bounds a sign-in: a session is a bearer credential.
const maxSessionTTL = 7 * 24 * time.Hour

// CheckConfig refuses a configuration the Hub cannot run with.
func CheckConfig(cfg Config) error {
	if cfg.SessionTTL < 0 || cfg.SessionTTL > maxSessionTTL {
		return fmt.Errorf("--hub-session-ttl %s: a sign-in lasts more than nothing and at most %s", cfg.SessionTTL, maxSessionTTL)
	}
	return nil
}

// Store is what the Hub keeps: sessions.
type Store interface {
	CreateHubSession(id string, h store.HubSession, ev store.AuditEvent) error
	HubSession(id string) (store.HubSession, error)
	DeleteHubSession(id string, ev store.AuditEvent) error
	DeleteExpiredHubSessions(now time.Time) (int, error)
}

// Parts are what the Hub's pages use.
type Parts struct {
	Gate *gate.Gate
	// API is what pages call, in-process, with the gate's call.
	API api.Services
	// Links are the connect links people open; SignIn, the sign-ins at
	// providers that link accounts by redirect.
	Links  *connect.Service
	SignIn *signin.Service
	Store  Store
	MAC    *keyring.MACKey
	// URL is where browsers reach the Hub (--public-url, or its address).
	URL func() string
}

// Hub serves the pages.
type Hub struct {
	cfg    Config
	gate   *gate.Gate
	api    api.Services
	links  *connect.Service
	signin *signin.Service
	url    func() string
	store  Store
	mac    *keyring.MACKey
	// secure: served over TLS, so the cookie is Secure (and __Host-).
	secure bool
	cookie string
	mux    *http.ServeMux
}

// New returns the Hub's handler; secure says it is served over TLS.
func New(cfg Config, p Parts, secure bool) *Hub {
	d := DefaultConfig()
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = d.SessionTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = d.Logger
	}
	if cfg.Now == nil {
		cfg.Now = d.Now
	}
	if cfg.ExpiryWarning <= 0 {
		cfg.ExpiryWarning = d.ExpiryWarning
	}
	h := &Hub{cfg: cfg, gate: p.Gate, api: p.API, links: p.Links, signin: p.SignIn, url: p.URL, store: p.Store, mac: p.MAC, secure: secure, cookie: "credbroker_hub", mux: http.NewServeMux()}
	if secure {
		h.cookie = "__Host-credbroker_hub" // bound to this origin, Secure, Path=/
	}
	for _, f := range []string{"static/hub.css", "static/copy.js"} {
		h.mux.HandleFunc("GET /"+f, func(w http.ResponseWriter, r *http.Request) { http.ServeFileFS(w, r, files, f) })
	}
	h.mux.HandleFunc("GET /{$}", h.home)
	h.mux.HandleFunc("GET /signin", h.signInPage)
	h.mux.HandleFunc("POST /signin", h.signIn)
	h.mux.HandleFunc("POST /signout", h.signedIn("hub: sign out", h.signOut))
	h.mux.HandleFunc("GET /accounts", h.signedIn("hub: accounts", h.accountsPage))
	h.mux.HandleFunc("GET /accounts/new", h.signedIn("hub: link form", h.linkPage))
	h.mux.HandleFunc("POST /accounts/new", h.signedIn("hub: link an account", h.link))
	h.mux.HandleFunc("GET /accounts/{id}", h.signedIn("hub: account", h.accountPage))
	h.mux.HandleFunc("POST /accounts/{id}/secrets", h.signedIn("hub: add a secret", h.addSecret))
	h.mux.HandleFunc("POST /accounts/{id}/secrets/remove", h.signedIn("hub: remove a secret", h.removeSecret))
	h.mux.HandleFunc("POST /accounts/{id}/grants", h.signedIn("hub: add a grant", h.addGrant))
	h.mux.HandleFunc("POST /accounts/{id}/grants/remove", h.signedIn("hub: remove a grant", h.removeGrant))
	h.mux.HandleFunc("GET /accounts/{id}/delete", h.signedIn("hub: delete form", h.deletePage))
	h.mux.HandleFunc("POST /accounts/{id}/delete", h.signedIn("hub: delete an account", h.deleteAccount))
	h.mux.HandleFunc("GET /callers", h.signedIn("hub: caller keys", h.callersPage))
	h.mux.HandleFunc("POST /callers", h.signedIn("hub: create a caller key", h.createCallerKey))
	h.mux.HandleFunc("POST /callers/{id}/revoke", h.signedIn("hub: revoke a caller key", h.revokeCallerKey))
	h.mux.HandleFunc("POST /callers/{id}/delete", h.signedIn("hub: delete a caller key", h.deleteCallerKey))
	h.mux.HandleFunc("GET /webhooks", h.signedIn("hub: webhooks", h.webhooksPage))
	h.mux.HandleFunc("POST /webhooks", h.signedIn("hub: add a webhook", h.createWebhook))
	h.mux.HandleFunc("POST /webhooks/{id}/delete", h.signedIn("hub: delete a webhook", h.deleteWebhook))
	h.mux.HandleFunc("GET /audit", h.signedIn("hub: audit", h.auditPage))
	h.mux.HandleFunc("GET /connect-links", h.signedIn("hub: connect links", h.connectLinksPage))
	h.mux.HandleFunc("POST /connect-links", h.signedIn("hub: create a connect link", h.createConnectLink))
	h.mux.HandleFunc("POST /connect-links/{id}/revoke", h.signedIn("hub: revoke a connect link", h.revokeConnectLink))
	h.mux.HandleFunc("POST /accounts/{id}/reconnect", h.signedIn("hub: reconnect", h.reconnect))
	h.mux.HandleFunc("GET "+signin.CallbackPath, h.callback)
	h.mux.HandleFunc("GET /signed-in", h.signedInResult)
	h.mux.HandleFunc("GET /connect/{secret}", h.connectPage)
	h.mux.HandleFunc("POST /connect/{secret}", h.connectWithLink)
	return h
}

// ServeHTTP sends every answer with the headers that keep pages to
// themselves: a strict Content-Security-Policy (scripts, styles and forms
// from the Hub only; its one script is the copy button's), no framing, no sniffing, no referrer, no
// caching.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cache-Control", "no-store")
	if h.secure {
		hd.Set("Strict-Transport-Security", "max-age=31536000")
	} else if !loopbackHost(r.Host) {
		// A page served over plaintext (loopback only) under another name
		// would be another site's, its cookies and forms included (DNS
		// rebinding).
		h.render(w, http.StatusMisdirectedRequest, "error", page{Title: "Refused", Message: "Open the Hub by its loopback address (127.0.0.1, [::1] or localhost)."})
		return
	}
	if r.Method == http.MethodPost && !sameOrigin(r) {
		h.cfg.Logger.Warn("refused a Hub form sent from another site", "path", loggedPath(r.URL.Path), "peer", r.RemoteAddr)
		h.render(w, http.StatusForbidden, "error", page{Title: "Refused", Message: "This form was sent from another site, so it was refused."})
		return
	}
	h.mux.ServeHTTP(w, r)
}

// loggedPath is a request's path as logs show it: a connect link's secret
// is left out.
func loggedPath(p string) string {
	if strings.HasPrefix(p, "/connect/") {
		return "/connect/..."
	}
	return p
}

// loopbackHost reports whether a request's Host names a loopback address.
func loopbackHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && ip.IsLoopback()
}

// sameOrigin reports whether a form was sent from the Hub's own pages, as
// browsers say in Sec-Fetch-Site or Origin.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		return site == "same-origin"
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true // not a browser's cross-site form: the session token still guards it
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host == r.Host
}

// page is what every template gets: the layout's fields, and the page's
// own in Data.
type page struct {
	Title, Principal, CSRF string
	// Message is the error page's; Notice confirms what the last form did.
	Message, Notice string
	Data            any
}

// signedInPage is a page of session s.
func signedInPage(s *session, title string, data any) page {
	return page{Title: title, Principal: s.Principal, CSRF: s.csrf, Data: data}
}

func (h *Hub) render(w http.ResponseWriter, code int, name string, p page) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	if err := pages.ExecuteTemplate(w, name+".html", p); err != nil {
		h.cfg.Logger.Error("could not render a Hub page", "page", name, "error", err)
	}
}

func (h *Hub) home(w http.ResponseWriter, r *http.Request) {
	http.Redirect(w, r, "/accounts", http.StatusSeeOther)
}

func (h *Hub) signInPage(w http.ResponseWriter, r *http.Request) {
	h.render(w, http.StatusOK, "signin", page{Title: "Sign in", Data: h.signInForm(r, "")})
}

// signInForm is the sign-in page's: how long a session lasts, and what
// was wrong with the key sent.
type signInForm struct {
	SessionTTL time.Duration
	Error      string
	// Certificate: the browser presented a client certificate.
	Certificate bool
}

// maxForm bounds a form's body.
const maxForm = 16 << 10

// signIn exchanges an admin caller key for a session.
func (h *Hub) signIn(w http.ResponseWriter, r *http.Request) {
	if !h.parseForm(w, r, nil) {
		return
	}
	if r.PostFormValue("with") == "certificate" {
		// The connection's client certificate, as the API takes it.
		c, err := h.gate.Authorize(r, "hub: sign in", gate.Admin, noKeyHeader, "")
		h.startSession(w, r, c, err)
		return
	}
	key := strings.TrimSpace(r.PostFormValue("caller_key"))
	if !strings.HasPrefix(key, callerKeyPrefix) {
		h.render(w, http.StatusBadRequest, "signin", page{Title: "Sign in", Data: h.signInForm(r, "Enter an admin caller key: it starts with "+callerKeyPrefix+".")})
		return
	}
	c, err := h.gate.AuthorizeKey(r, "hub: sign in", gate.Admin, key, "")
	h.startSession(w, r, c, err)
}

// noKeyHeader is a header no request sends: a call that names it proves
// itself with its client certificate only.
const noKeyHeader = "X-Credbroker-No-Key"

// startSession signs in the principal of call c, which the gate admitted
// (or refused with err): a new session, the browser's earlier one ended.
func (h *Hub) startSession(w http.ResponseWriter, r *http.Request, c *gate.Call, err error) {
	previous, _ := h.session(r)
	if err == nil {
		var secret string
		if secret, err = newSecret(); err == nil {
			now := h.cfg.Now()
			if _, perr := h.store.DeleteExpiredHubSessions(now); perr != nil {
				h.cfg.Logger.Warn("could not remove expired Hub sessions", "error", perr)
			}
			s := store.HubSession{Principal: c.Principal, CreateTime: now, ExpireTime: now.Add(h.cfg.SessionTTL)}
			if err = h.store.CreateHubSession(h.sessionID(secret), s, c.ChangeEvent("", "signed in to the Hub")); err == nil {
				http.SetCookie(w, h.sessionCookie(secret, s.ExpireTime))
				if previous != nil { // one session a browser
					ev := c.Event(codes.OK)
					ev.Detail = "signed in again: the earlier Hub session ended"
					_ = h.store.DeleteHubSession(previous.id, ev)
				}
			}
		}
	}
	if err = h.finish(r, c, err); err != nil {
		code, msg := httpStatus(w, err)
		h.render(w, code, "signin", page{Title: "Sign in", Data: h.signInForm(r, msg)})
		return
	}
	http.Redirect(w, r, "/accounts", http.StatusSeeOther)
}

// signInForm is the sign-in page's, with the error of the last try: a
// browser that presented a client certificate may sign in with it.
func (h *Hub) signInForm(r *http.Request, problem string) signInForm {
	return signInForm{SessionTTL: h.cfg.SessionTTL, Error: problem, Certificate: r.TLS != nil && len(r.TLS.PeerCertificates) > 0}
}

// session is the signed-in session of a request.
type session struct {
	id string // the stored hash
	store.HubSession
	csrf string
}

// signedIn runs fn for a request of a signed-in admin, as a call through
// the gate named method; others go to the sign-in page. A form must carry
// the session's token.
func (h *Hub) signedIn(method string, fn func(http.ResponseWriter, *http.Request, *session, *gate.Call) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h.gate.Unavailable(); err != nil { // at once, and signed in still
			code, msg := httpStatus(w, err)
			h.render(w, code, "error", page{Title: errorTitle(code), Message: msg})
			return
		}
		s, err := h.session(r)
		if err != nil {
			code, msg := httpStatus(w, api.StatusOf(r.Context(), h.cfg.Logger, err))
			h.render(w, code, "error", page{Title: errorTitle(code), Message: msg})
			return
		}
		if s == nil {
			h.clearCookie(w)
			http.Redirect(w, r, "/signin", http.StatusSeeOther)
			return
		}
		if r.Method == http.MethodPost {
			if !h.parseForm(w, r, s) {
				return
			}
			if subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(s.csrf)) != 1 {
				h.cfg.Logger.Warn("refused a Hub form without its session's token", "principal", s.Principal, "path", r.URL.Path, "peer", r.RemoteAddr)
				h.render(w, http.StatusForbidden, "error", page{Title: "Refused", Message: "This form did not come from your session's pages, so it was refused. Reload the page and try again.", Principal: s.Principal, CSRF: s.csrf})
				return
			}
		}
		c, err := h.gate.AuthorizeSession(r, method, gate.Admin, s.Principal, "")
		if err == nil {
			err = fn(w, r, s, c)
		}
		var done rendered
		if errors.As(err, &done) { // its page says what went wrong
			_ = h.finish(r, c, done.error)
			return
		}
		if err = h.finish(r, c, err); err == nil {
			return
		}
		p := page{Principal: s.Principal, CSRF: s.csrf}
		if status.Code(err) == codes.Unauthenticated { // the key was revoked or expired meanwhile
			ev := c.Event(codes.Unauthenticated)
			ev.Detail = "Hub session ended: " + status.Convert(err).Message()
			_ = h.store.DeleteHubSession(s.id, ev)
			h.clearCookie(w)
			p = page{}
		}
		code, msg := httpStatus(w, err)
		p.Title, p.Message = errorTitle(code), msg
		h.render(w, code, "error", p)
	}
}

// finish maps err to the status callers see (as the API does) and ends
// the call through the gate with it.
func (h *Hub) finish(r *http.Request, c *gate.Call, err error) error {
	if err != nil {
		err = api.StatusOf(r.Context(), h.cfg.Logger, err)
	}
	if ferr := h.gate.Finish(c, err); ferr != nil {
		return ferr
	}
	return err
}

// session reads the request's live session, or nil if it has none. Of
// several cookies of the Hub's name (another service on the host may set
// one), the first live one counts. It fails only if the storage does.
func (h *Hub) session(r *http.Request) (*session, error) {
	for _, ck := range r.CookiesNamed(h.cookie) {
		if len(ck.Value) != base64.RawURLEncoding.EncodedLen(secretSize) {
			continue
		}
		id := h.sessionID(ck.Value)
		s, err := h.store.HubSession(id)
		switch {
		case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrIntegrity):
			continue
		case err != nil:
			return nil, err
		case h.cfg.Now().Before(s.ExpireTime):
			return &session{id: id, HubSession: s, csrf: hex.EncodeToString(h.mac.Sum("hub-csrf", ck.Value))}, nil
		}
	}
	return nil, nil
}

// parseForm reads a form of at most maxForm bytes, or answers 413 (on
// the page of session s, if any) and returns false.
func (h *Hub) parseForm(w http.ResponseWriter, r *http.Request, s *session) bool {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	err := r.ParseForm()
	if err == nil {
		return true
	}
	p := page{Title: "Refused", Message: "This form could not be read: " + err.Error()}
	code := http.StatusBadRequest
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		code, p.Message = http.StatusRequestEntityTooLarge, fmt.Sprintf("This form is larger than the Hub takes (%d KiB).", maxForm>>10)
	}
	if s != nil {
		p.Principal, p.CSRF = s.Principal, s.csrf
	}
	h.render(w, code, "error", p)
	return false
}

// callerKeyPrefix starts every caller key.
const callerKeyPrefix = "cbk_"

func (h *Hub) signOut(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	if err := h.store.DeleteHubSession(s.id, c.ChangeEvent("", "signed out of the Hub")); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	h.clearCookie(w)
	h.endSignIns(w, r)
	http.Redirect(w, r, "/signin", http.StatusSeeOther)
	return nil
}

// secretSize is the size of a session's secret.
const secretSize = 32

func newSecret() (string, error) {
	b := make([]byte, secretSize)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// sessionID is what a session is stored under: a keyed hash of its
// secret, which the storage never holds.
func (h *Hub) sessionID(secret string) string {
	return hex.EncodeToString(h.mac.Sum("hub-session", secret))
}

func (h *Hub) sessionCookie(secret string, expires time.Time) *http.Cookie {
	return &http.Cookie{Name: h.cookie, Value: secret, Path: "/", Expires: expires, HttpOnly: true, Secure: h.secure, SameSite: http.SameSiteStrictMode}
}

func (h *Hub) clearCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: h.cookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: h.secure, SameSite: http.SameSiteStrictMode})
}

// httpStatus is the HTTP status and message of a status (see finish); a
// wait it asks for goes into Retry-After.
func httpStatus(w http.ResponseWriter, err error) (int, string) {
	st := status.Convert(err)
	for _, d := range st.Details() {
		if retry, ok := d.(*errdetails.RetryInfo); ok {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(retry.GetRetryDelay().AsDuration().Seconds()))))
		}
	}
	code := httpCode(err)
	if code == http.StatusInternalServerError {
		return code, fmt.Sprintf("internal error (%s)", st.Code())
	}
	return code, st.Message()
}

// httpCode is the HTTP status of a status.
func httpCode(err error) int {
	switch status.Code(err) {
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists:
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// errorTitle heads the error page of an HTTP status.
func errorTitle(code int) string {
	switch code {
	case http.StatusNotFound:
		return "Not found"
	case http.StatusUnauthorized:
		return "Signed out"
	case http.StatusTooManyRequests:
		return "Too many requests"
	case http.StatusServiceUnavailable:
		return "Unavailable"
	case http.StatusInternalServerError:
		return "Broker error"
	}
	return "Not done"
}
