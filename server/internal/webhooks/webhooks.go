// Package webhooks delivers credential events to webhook endpoints: one
// process of a cluster at a time, each endpoint's events in log order, at
// least once, signed with the endpoint's secret, retried with capped
// exponential backoff for a bounded time. Its HTTP client follows no
// redirect, connects to no link-local or cloud-metadata address
// unless allowed, and bounds each answer's size and time.
package webhooks

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/internal/backoff"
	"github.com/credbroker/credbroker/server/internal/events"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/store"
)

// Config configures deliveries.
type Config struct {
	// Timeout bounds one attempt, from connecting to the end of the
	// answer. Default 10 s.
	Timeout time.Duration
	// RetryFor is how long an event is tried before it is given up (and
	// the next one delivered). Default 24 hours.
	RetryFor time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts at one
	// event (doubling, jittered). Defaults 1 s and 10 minutes.
	MinBackoff, MaxBackoff time.Duration
	// AllowLinkLocal lets deliveries go to link-local addresses
	// (169.254.0.0/16, fe80::/10), where cloud metadata services answer,
	// and to those services' other addresses (see metadataAddrs).
	AllowLinkLocal bool
	// Encode is an event as its deliveries' body (set by the server: the
	// API's JSON of it).
	Encode func(store.Event) ([]byte, error)
	// OnAttempt, if set, is told of each attempt: the webhook's id and
	// "delivered", "failed" or "gave_up" (for metrics).
	OnAttempt func(webhook, result string)
	// Logger: default slog.Default().
	Logger *slog.Logger
}

// DefaultConfig is the configuration of an unset Config's fields.
func DefaultConfig() Config {
	return Config{Timeout: 10 * time.Second, RetryFor: 24 * time.Hour, MinBackoff: time.Second, MaxBackoff: 10 * time.Minute}
}

// Service manages webhooks and delivers to them.
type Service struct {
	cfg    Config
	store  *store.Store
	mac    *keyring.MACKey
	events *events.Service
	client *http.Client
}

// New returns the webhooks of st; their signing secrets are made with mac.
func New(cfg Config, st *store.Store, mac *keyring.MACKey, evs *events.Service) *Service {
	d := DefaultConfig()
	for _, f := range [][2]*time.Duration{{&cfg.Timeout, &d.Timeout}, {&cfg.RetryFor, &d.RetryFor}, {&cfg.MinBackoff, &d.MinBackoff}, {&cfg.MaxBackoff, &d.MaxBackoff}} {
		if *f[0] <= 0 {
			*f[0] = *f[1]
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Service{cfg: cfg, store: st, mac: mac, events: evs, client: newClient(cfg)}
}

// newClient is the HTTP client of deliveries: no proxy from the
// environment, no redirect followed, no link-local or metadata address
// unless allowed (checked on the address connected to, so that a name
// that resolves there, now or later, gets no further).
func newClient(cfg Config) *http.Client {
	dialer := &net.Dialer{Timeout: cfg.Timeout, Control: func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return err
		}
		if ip := ap.Addr(); !cfg.AllowLinkLocal && refused(ip) {
			return fmt.Errorf("%w: %s is link-local or a cloud metadata service's (--webhook-allow-link-local allows it)", errRefusedAddress, ip)
		}
		return nil
	}}
	return &http.Client{
		Transport: &http.Transport{
			DialContext:           dialer.DialContext,
			TLSHandshakeTimeout:   cfg.Timeout,
			ResponseHeaderTimeout: cfg.Timeout,
			MaxIdleConnsPerHost:   2,
			IdleConnTimeout:       time.Minute,
		},
		Timeout:       cfg.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

var errRefusedAddress = errors.New("address refused")

// metadataAddrs are the cloud metadata services' addresses that are not
// link-local (AWS's over IPv6, Alibaba Cloud's); the others (169.254.169.254
// and the like) are.
var metadataAddrs = map[netip.Addr]bool{netip.MustParseAddr("fd00:ec2::254"): true, netip.MustParseAddr("100.100.100.200"): true}

// IPv6 prefixes whose addresses carry an IPv4 address that a network may
// route them to: NAT64 (well-known and local-use) and 6to4.
var (
	nat64      = []netip.Prefix{netip.MustParsePrefix("64:ff9b::/96"), netip.MustParsePrefix("64:ff9b:1::/48")}
	sixToFour  = netip.MustParsePrefix("2002::/16")
	ipv4Compat = netip.MustParsePrefix("::/96")
)

// refused says whether deliveries may not go to ip: a link-local address
// or a metadata service's, also as the IPv4 address an IPv6 one carries
// (mapped, compatible, NAT64, 6to4).
func refused(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64[0].Contains(ip) || nat64[1].Contains(ip), ipv4Compat.Contains(ip) && !ip.IsUnspecified() && !ip.IsLoopback():
			ip = netip.AddrFrom4([4]byte(b[12:16]))
		case sixToFour.Contains(ip):
			ip = netip.AddrFrom4([4]byte(b[2:6]))
		}
	}
	return ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || metadataAddrs[ip]
}

// RefusesHost says whether a URL's host is an address deliveries may not
// go to (a name is checked when it is connected to).
func (s *Service) RefusesHost(host string) bool {
	ip, err := netip.ParseAddr(host)
	return err == nil && !s.cfg.AllowLinkLocal && refused(ip)
}

var (
	// ErrNotFound: no webhook has the id.
	ErrNotFound = grpcerr.New(codes.NotFound, "webhook not found")
	// ErrExists: a webhook has the id already.
	ErrExists = grpcerr.New(codes.AlreadyExists, "a webhook with this webhook_id already exists")
)

// known maps the store's errors to the service's.
func known(err error) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return ErrNotFound
	case errors.Is(err, store.ErrExists):
		return ErrExists
	}
	return err
}

// NewWebhook is a validated request for a webhook.
type NewWebhook struct {
	ID, URL, Description string
	Kinds, Accounts      []string
	Creator              string
}

// Create stores a new webhook, to which the events from now on are
// delivered, with ev, and returns it with its signing secret, which is
// never shown again. It returns ErrExists if the id is taken.
func (s *Service) Create(in NewWebhook, newest uint64, ev store.AuditEvent) (store.Webhook, secret.String, error) {
	nonce := make([]byte, 16)
	rand.Read(nonce)
	w := store.Webhook{ID: in.ID, URL: in.URL, Kinds: in.Kinds, Accounts: in.Accounts, Description: in.Description,
		Nonce: nonce, CreateTime: ev.Time, Creator: in.Creator}
	if err := s.store.CreateWebhook(w, newest, ev); err != nil {
		return store.Webhook{}, secret.String{}, known(err)
	}
	return w, s.signingSecret(w), nil
}

// Get returns a webhook and how its deliveries go, ErrNotFound, or
// store.ErrIntegrity.
func (s *Service) Get(id string) (store.Webhook, store.WebhookDelivery, error) {
	w, err := s.store.Webhook(id)
	if err != nil {
		return w, store.WebhookDelivery{}, known(err)
	}
	d, err := s.store.WebhookDelivery(id)
	return w, d, err
}

// List returns up to limit webhooks after the given id, in id order, with
// how their deliveries go, and whether more follow.
func (s *Service) List(after string, limit int) ([]store.Webhook, []store.WebhookDelivery, bool, error) {
	ws, err := s.store.Webhooks(after, limit+1)
	if err != nil {
		return nil, nil, false, err
	}
	more := len(ws) > limit
	ws = ws[:min(len(ws), limit)]
	ds := make([]store.WebhookDelivery, len(ws))
	for i, w := range ws {
		if ds[i], err = s.store.WebhookDelivery(w.ID); err != nil && !errors.Is(err, store.ErrIntegrity) {
			return nil, nil, false, err
		}
	}
	return ws, ds, more, nil
}

// Delete removes a webhook, with ev, or returns ErrNotFound.
func (s *Service) Delete(id string, ev store.AuditEvent) error {
	return known(s.store.DeleteWebhook(id, ev))
}

// signingSecret is a webhook's signing secret: made from its id and
// nonce by the MAC key, so that nothing secret is stored, and a master-key
// rotation (which re-wraps the MAC key) leaves it as it is.
func (s *Service) signingSecret(w store.Webhook) secret.String {
	sum := s.mac.Sum("webhook-signing-secret", w.ID+"\x00"+string(w.Nonce))
	return secret.New("whsec_" + base64.RawURLEncoding.EncodeToString(sum))
}

// Signature is the Credbroker-Signature of body, signed at timestamp
// (seconds since 1970) with a webhook's signing secret.
func signature(signingSecret secret.String, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(signingSecret.Reveal()))
	mac.Write([]byte(timestamp))
	mac.Write([]byte("."))
	mac.Write(body)
	return "v1=" + hex.EncodeToString(mac.Sum(nil))
}

// Run delivers events while this process holds the deliveries' lock,
// until ctx ends.
func (s *Service) Run(ctx context.Context) {
	events.WhileHolding(ctx, s.store, "webhook-deliveries", s.cfg.Logger, s.deliver)
}

// deliver runs a delivery loop for each webhook, starting one for each
// new webhook within a second, until ctx ends or the lock is lost.
func (s *Service) deliver(ctx context.Context, holds []storage.Cond) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		mu sync.Mutex
		// running are the loops, each of one webhook (its id and nonce: a
		// webhook deleted and made again under its id is another one).
		running = map[string]context.CancelFunc{}
		wg      sync.WaitGroup
	)
	defer wg.Wait()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		ws, err := s.store.Webhooks("", math.MaxInt)
		if err != nil {
			s.cfg.Logger.Error("could not read the webhooks", "error", err)
		}
		live := map[string]bool{}
		for _, w := range ws {
			if w.Tampered {
				continue
			}
			key := w.ID + "\x00" + string(w.Nonce)
			live[key] = true
			mu.Lock()
			_, started := running[key]
			var wctx context.Context
			var stop context.CancelFunc
			if !started {
				wctx, stop = context.WithCancel(ctx)
				running[key] = stop
			}
			mu.Unlock()
			if started {
				continue
			}
			wg.Go(func() {
				err := s.deliverTo(wctx, w, holds)
				if errors.Is(err, storage.ErrConflict) {
					cancel(errors.New("the webhook deliveries' lock was lost"))
				} else if err != nil && wctx.Err() == nil {
					s.cfg.Logger.Error("webhook deliveries failed; retrying", "webhook", w.ID, "error", err)
				}
				mu.Lock()
				delete(running, key)
				mu.Unlock()
				stop()
			})
		}
		if err == nil {
			// A loop whose webhook is gone stops now, even in its wait
			// between attempts.
			mu.Lock()
			for key, stop := range running {
				if !live[key] {
					stop()
				}
			}
			mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-tick.C:
		}
	}
}

// poll is how often a delivery loop looks at the log unwoken.
const poll = 5 * time.Second

// maxAttempts is how many attempts a webhook's record keeps.
const maxAttempts = 10

// deliverTo delivers the events after webhook w's cursor, one at a time,
// until ctx ends, w is deleted (nil), or storing its progress fails.
func (s *Service) deliverTo(ctx context.Context, w store.Webhook, holds []storage.Cond) error {
	id := w.ID
	for ctx.Err() == nil {
		// Gone, or deleted and made again under its id: another webhook.
		if now, err := s.store.Webhook(id); errors.Is(err, store.ErrNotFound) || err == nil && !bytes.Equal(now.Nonce, w.Nonce) {
			return nil
		} else if err != nil {
			return err
		}
		d, err := s.store.WebhookDelivery(id)
		if err != nil {
			return err
		}
		grown := s.events.Grown() // before the read: growth after it wakes us
		evs, _, err := s.store.Events(d.Cursor, 100)
		if err != nil {
			return err
		}
		var next *store.Event
		moved := false
		for i, e := range evs {
			if e.Seq > d.Cursor+1 {
				// Deleted before they were delivered (or looked at): the
				// receiver waited longer than the broker keeps events.
				record(&d, store.WebhookAttempt{Time: time.Now(), Error: fmt.Sprintf("%d events were deleted (--event-retention) before they could be delivered", e.Seq-d.Cursor-1), GaveUp: true})
				d.Cursor, moved = e.Seq-1, true
			}
			if store.EventMatches(e, w.Kinds, w.Accounts) {
				next = &evs[i]
				break
			}
			d.Cursor, moved = e.Seq, true // not for this webhook
		}
		if moved {
			if err := s.save(w, d, holds); err != nil {
				return err
			}
		}
		if next == nil {
			select {
			case <-ctx.Done():
			case <-grown:
			case <-time.After(poll):
			}
			continue
		}
		if wait := time.Until(d.NextAttempt); wait > 0 {
			events.Sleep(ctx, wait)
			continue
		}
		a := s.post(ctx, w, *next)
		if ctx.Err() != nil {
			return nil // cut off by the end of the lock or of the broker: tried again
		}
		now := time.Now()
		if a.Error == "" {
			d.Cursor, d.LastEventID, d.Failures, d.FailingSince, d.NextAttempt = next.Seq, next.ID, 0, time.Time{}, time.Time{}
		} else {
			if d.Failures == 0 {
				d.FailingSince = a.Time
			}
			d.Failures++
			d.NextAttempt = now.Add(backoff.Jittered(d.Failures, s.cfg.MinBackoff, s.cfg.MaxBackoff))
			if now.Sub(d.FailingSince) >= s.cfg.RetryFor {
				s.cfg.Logger.Warn("gave up delivering an event to a webhook", "webhook", id, "event", next.ID, "kind", next.Kind, "attempts", d.Failures, "error", a.Error)
				a.GaveUp = true
				d.Cursor, d.LastEventID, d.Failures, d.FailingSince, d.NextAttempt = next.Seq, next.ID, 0, time.Time{}, time.Time{}
			}
		}
		record(&d, a)
		if s.cfg.OnAttempt != nil {
			s.cfg.OnAttempt(id, outcome(a))
		}
		if err := s.save(w, d, holds); err != nil {
			return err
		}
	}
	return nil
}

// outcome is an attempt's result, as metrics count it.
func outcome(a store.WebhookAttempt) string {
	switch {
	case a.GaveUp:
		return "gave_up"
	case a.Error != "":
		return "failed"
	}
	return "delivered"
}

// record adds an attempt to d's last ones.
func record(d *store.WebhookDelivery, a store.WebhookAttempt) {
	d.Attempts = append([]store.WebhookAttempt{a}, d.Attempts[:min(len(d.Attempts), maxAttempts-1)]...)
}

// save stores d, the state of w's deliveries; w deleted meanwhile is not
// an error (the next turn of its loop ends it).
func (s *Service) save(w store.Webhook, d store.WebhookDelivery, holds []storage.Cond) error {
	err := s.store.SaveWebhookDelivery(w, d, holds)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}

// maxAnswer bounds how much of an answer is read (and discarded).
const maxAnswer = 64 << 10

// post POSTs event e to webhook w, signed, and says how it went.
func (s *Service) post(ctx context.Context, w store.Webhook, e store.Event) (a store.WebhookAttempt) {
	a = store.WebhookAttempt{Time: time.Now(), EventID: e.ID, Kind: e.Kind}
	defer func() { a.Duration = time.Since(a.Time) }()
	body, err := s.cfg.Encode(e)
	if err != nil {
		a.Error = "could not encode the event; see the server log"
		s.cfg.Logger.Error("could not encode an event for a webhook", "event", e.ID, "error", err)
		return a
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		a.Error = "the webhook's URL is not usable"
		return a
	}
	timestamp := strconv.FormatInt(time.Now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "credbroker-webhooks")
	req.Header.Set("Credbroker-Event-Id", e.ID)
	req.Header.Set("Credbroker-Timestamp", timestamp)
	req.Header.Set("Credbroker-Signature", signature(s.signingSecret(w), timestamp, body))
	resp, err := s.client.Do(req)
	if err != nil {
		a.Error = describe(err, s.cfg.Timeout)
		return a
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
	resp.Body.Close()
	a.Status = resp.StatusCode
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		a.Error = fmt.Sprintf("answered %d, a redirect, which is never followed", resp.StatusCode)
	case resp.StatusCode < 200 || resp.StatusCode >= 300:
		a.Error = fmt.Sprintf("answered %d", resp.StatusCode)
	}
	return a
}

// describe says why a request got no answer, without its URL (which may
// carry a token of the receiver's).
func describe(err error, timeout time.Duration) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ne net.Error
	switch {
	case errors.Is(err, errRefusedAddress):
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Sprintf("no answer within %s", timeout)
	}
	return err.Error()
}
