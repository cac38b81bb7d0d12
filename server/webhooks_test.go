package server_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
)

// receiver is a webhook endpoint that checks each delivery's signature
// with its own code (not the broker's) and answers as told.
type receiver struct {
	t      *testing.T
	secret string
	srv    *httptest.Server

	mu        sync.Mutex
	answer    func(w http.ResponseWriter) // nil: 204
	delivered []delivery                  // accepted deliveries, in order
	attempts  int
	bodies    []string
}

type delivery struct {
	id, kind, account string
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{t: t}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts++
	r.bodies = append(r.bodies, string(body))
	ts := req.Header.Get("Credbroker-Timestamp")
	mac := hmac.New(sha256.New, []byte(r.secret))
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	want := "v1=" + hex.EncodeToString(mac.Sum(nil))
	sent, err := strconv.ParseInt(ts, 10, 64)
	if !hmac.Equal([]byte(req.Header.Get("Credbroker-Signature")), []byte(want)) || err != nil || time.Since(time.Unix(sent, 0)).Abs() > time.Minute {
		r.t.Errorf("a delivery whose signature does not verify: %q at %q", req.Header.Get("Credbroker-Signature"), ts)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var e struct{ Id, Kind, Account string }
	if err := json.Unmarshal(body, &e); err != nil || e.Id != req.Header.Get("Credbroker-Event-Id") || req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/json" {
		r.t.Errorf("a delivery that is not an event: %s %v\n%s", req.Method, req.Header, body)
	}
	if answer := r.answer; answer != nil {
		r.mu.Unlock()
		answer(w) // may sleep: not under the lock
		r.mu.Lock()
		return
	}
	r.delivered = append(r.delivered, delivery{e.Id, e.Kind, e.Account})
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) set(answer func(w http.ResponseWriter)) {
	r.mu.Lock()
	r.answer = answer
	r.mu.Unlock()
}

func (r *receiver) got() ([]delivery, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.delivered...), r.attempts
}

// webhookConfig makes deliveries retry fast, and lets the test call as
// often as it polls.
func webhookConfig(cfg *server.Config) {
	cfg.Gate.RateLimit = -1
	cfg.Webhooks.MinBackoff, cfg.Webhooks.MaxBackoff = 20*time.Millisecond, 100*time.Millisecond
	cfg.Webhooks.Timeout = 300 * time.Millisecond
}

func (b *broker) webhooks() credbrokerv1.WebhookServiceClient {
	return credbrokerv1.NewWebhookServiceClient(b.conn)
}

// createWebhook registers r for events of the given kinds.
func (b *broker) createWebhook(t *testing.T, id string, r *receiver, kinds ...credbrokerv1.EventKind) *credbrokerv1.Webhook {
	t.Helper()
	resp, err := b.webhooks().CreateWebhook(context.Background(), &credbrokerv1.CreateWebhookRequest{
		WebhookId: id, Webhook: &credbrokerv1.Webhook{Url: r.srv.URL + "/hooks/credbroker", Kinds: kinds, Description: "test receiver"},
	})
	if err != nil {
		t.Fatalf("CreateWebhook: %v", err)
	}
	if !strings.HasPrefix(resp.GetSigningSecret(), "whsec_") || len(resp.GetSigningSecret()) != 49 {
		t.Fatalf("signing secret %q", resp.GetSigningSecret())
	}
	r.mu.Lock()
	r.secret = resp.GetSigningSecret()
	r.mu.Unlock()
	return resp.GetWebhook()
}

func (b *broker) webhook(t *testing.T, id string) *credbrokerv1.Webhook {
	t.Helper()
	resp, err := b.webhooks().GetWebhook(context.Background(), &credbrokerv1.GetWebhookRequest{Name: "webhooks/" + id})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetWebhook()
}

// A receiver that fails, then answers too slowly, then redirects gets
// nothing out of order: each event is retried (visible through the API)
// until the receiver takes it, and then the next; every delivery is
// signed; nothing secret is in them, in the webhook's record, the audit
// trail or the log.
func TestWebhookDeliveries(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	webhookConfig(&cfg)
	b := startWith(t, cfg, fake, logs)
	r := newReceiver(t)
	linked := credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED
	b.createWebhook(t, "ops", r, linked)

	r.set(func(w http.ResponseWriter) { w.WriteHeader(http.StatusInternalServerError) })
	b.link(t, "a1")
	b.link(t, "a2")
	var hook *credbrokerv1.Webhook
	waitFor(t, 10*time.Second, func() error {
		hook = b.webhook(t, "ops")
		if d := hook.GetDelivery(); d.GetFailedAttempts() < 3 || d.GetNextAttemptTime() == nil || d.GetLastAttempts()[0].GetStatusCode() != 500 {
			return fmt.Errorf("delivery: %v", d)
		}
		return nil
	})
	if a := hook.GetDelivery().GetLastAttempts()[0]; a.GetError() != "answered 500" || a.GetEventKind() != linked || a.GetEventId() == "" || a.GetDuration() == nil {
		t.Fatalf("the last attempt: %v", a)
	}
	r.set(func(w http.ResponseWriter) { time.Sleep(time.Second) })
	waitFor(t, 10*time.Second, func() error {
		if a := b.webhook(t, "ops").GetDelivery().GetLastAttempts()[0]; !strings.Contains(a.GetError(), "no answer within 300ms") {
			return fmt.Errorf("the last attempt: %v", a)
		}
		return nil
	})
	redirected := newReceiver(t)
	r.set(func(w http.ResponseWriter) {
		w.Header().Set("Location", redirected.srv.URL)
		w.WriteHeader(http.StatusTemporaryRedirect)
	})
	waitFor(t, 10*time.Second, func() error {
		if a := b.webhook(t, "ops").GetDelivery().GetLastAttempts()[0]; !strings.Contains(a.GetError(), "307, a redirect, which is never followed") {
			return fmt.Errorf("the last attempt: %v", a)
		}
		return nil
	})
	if got, attempts := r.got(); len(got) != 0 || attempts < 5 {
		t.Fatalf("delivered %v in %d attempts while failing", got, attempts)
	}

	r.set(nil)
	b.link(t, "a3")
	var got []delivery
	waitFor(t, 10*time.Second, func() error {
		if got, _ = r.got(); len(got) < 3 {
			return fmt.Errorf("delivered %v", got)
		}
		return nil
	})
	for i, d := range got {
		if want := fmt.Sprintf("accounts/a%d", i+1); d.account != want || d.kind != "EVENT_KIND_ACCOUNT_LINKED" || i > 0 && d.id == got[i-1].id {
			t.Fatalf("deliveries %v: #%d should be the link of %s", got, i, want)
		}
	}
	if _, n := redirected.got(); n != 0 {
		t.Fatalf("the redirect was followed: %d requests", n)
	}
	waitFor(t, 10*time.Second, func() error { // stored once the receiver has answered
		if d := b.webhook(t, "ops").GetDelivery(); d.GetLastEventId() != got[2].id {
			return fmt.Errorf("after the deliveries: %v", d)
		}
		return nil
	})
	d := b.webhook(t, "ops").GetDelivery()
	if d.GetFailedAttempts() != 0 || d.GetNextAttemptTime() != nil || d.GetLastAttempts()[0].GetStatusCode() != 204 || d.GetLastAttempts()[0].GetDuration().AsDuration() <= 0 {
		t.Fatalf("after the deliveries: %v", d)
	}

	_, scrape := b.opsGet(t, "/metrics")
	for series, want := range map[string]*regexp.Regexp{
		"delivered": regexp.MustCompile(`(?m)^credbroker_webhook_attempts_total\{result="delivered",webhook="ops"\} 3$`),
		"failed":    regexp.MustCompile(`(?m)^credbroker_webhook_attempts_total\{result="failed",webhook="ops"\} ([5-9]|\d\d+)$`),
	} {
		if !want.MatchString(scrape) {
			t.Errorf("/metrics has no %s series like %s", series, want)
		}
	}
	if _, err := b.webhooks().DeleteWebhook(context.Background(), &credbrokerv1.DeleteWebhookRequest{Name: "webhooks/ops"}); err != nil {
		t.Fatal(err)
	}
	b.link(t, "a4")
	list, err := b.webhooks().ListWebhooks(context.Background(), &credbrokerv1.ListWebhooksRequest{})
	if err != nil || len(list.GetWebhooks()) != 0 {
		t.Fatalf("ListWebhooks after the delete: %v, %v", list, err)
	}

	audit, err := b.audit.ListAuditEvents(context.Background(), &credbrokerv1.ListAuditEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	scanned := strings.Join(r.bodies, "\n") + protojson.Format(hook) + protojson.Format(audit) + b.logs.String()
	secret := r.secret
	r.mu.Unlock()
	if len(scanned) < 1000 || !strings.Contains(scanned, "webhooks/ops") {
		t.Fatalf("the scan would prove little: %d bytes", len(scanned))
	}
	assertAbsent(t, "the deliveries, the webhook, the audit trail and the log", []byte(scanned),
		secret, secret[len("whsec_"):], clientSecret, b.keys.admin, b.keys.svc, b.fake.LastToken())
}

// An event the receiver never takes is given up after --webhook-retry-for,
// shown as such, and the next one is delivered.
func TestWebhookGivesUp(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	webhookConfig(&cfg)
	cfg.Webhooks.RetryFor = 500 * time.Millisecond
	b := startWith(t, cfg, fake, logs)
	r := newReceiver(t)
	b.createWebhook(t, "ops", r, credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED)
	r.set(func(w http.ResponseWriter) { w.WriteHeader(http.StatusServiceUnavailable) })
	b.link(t, "a1")
	var gaveUp *credbrokerv1.WebhookAttempt
	waitFor(t, 10*time.Second, func() error {
		for _, a := range b.webhook(t, "ops").GetDelivery().GetLastAttempts() {
			if a.GetGaveUp() {
				gaveUp = a
				return nil
			}
		}
		return fmt.Errorf("not given up")
	})
	if gaveUp.GetStatusCode() != 503 {
		t.Fatalf("the attempt that gave up: %v", gaveUp)
	}
	r.set(nil)
	b.link(t, "a2")
	waitFor(t, 10*time.Second, func() error {
		if got, _ := r.got(); len(got) != 1 || got[0].account != "accounts/a2" {
			return fmt.Errorf("delivered %v", got)
		}
		return nil
	})
}

// A webhook's URL must be https (or http to loopback) without a password,
// and not to a link-local or cloud metadata address, unless allowed.
func TestWebhookAddressRules(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	webhookConfig(&cfg)
	b := startWith(t, cfg, fake, logs)
	ctx := context.Background()
	for _, u := range []string{"", "http://hooks.example.com/x", "https://user:pw@hooks.example.com/x", "/relative", "https://hooks.example.com/x#frag", "ftp://hooks.example.com/"} {
		_, err := b.webhooks().CreateWebhook(ctx, &credbrokerv1.CreateWebhookRequest{WebhookId: "bad", Webhook: &credbrokerv1.Webhook{Url: u}})
		wantCode(t, err, codes.InvalidArgument, "webhook.url")
	}
	_, err := b.webhooks().CreateWebhook(ctx, &credbrokerv1.CreateWebhookRequest{WebhookId: "Bad_Id", Webhook: &credbrokerv1.Webhook{Url: "https://hooks.example.com/"}})
	wantCode(t, err, codes.InvalidArgument, "webhook_id")
	_, err = b.webhooks().CreateWebhook(ctx, &credbrokerv1.CreateWebhookRequest{WebhookId: "k", Webhook: &credbrokerv1.Webhook{Url: "https://hooks.example.com/", Kinds: []credbrokerv1.EventKind{0}}})
	wantCode(t, err, codes.InvalidArgument, "kinds")
	_, err = b.webhooks().GetWebhook(ctx, &credbrokerv1.GetWebhookRequest{Name: "webhooks/none"})
	wantCode(t, err, codes.NotFound, "")

	// Link-local and metadata addresses, however spelled, are refused at
	// once (a name that resolves there is refused when connected to).
	for _, u := range []string{"https://169.254.169.254/latest/meta-data/", "https://[fd00:ec2::254]/", "https://[64:ff9b::a9fe:a9fe]/", "https://[::ffff:169.254.169.254]/",
		"https://100.100.100.200/", "https://[fe80::1]/", "http://127.0.0.1:99999/"} {
		_, err := b.webhooks().CreateWebhook(ctx, &credbrokerv1.CreateWebhookRequest{WebhookId: "bad", Webhook: &credbrokerv1.Webhook{Url: u}})
		wantCode(t, err, codes.InvalidArgument, "webhook.url")
	}
	_, err = b.webhooks().CreateWebhook(ctx, &credbrokerv1.CreateWebhookRequest{WebhookId: "bad", Webhook: &credbrokerv1.Webhook{Url: "https://hooks.example.com/", Description: "ring\x07\x1b[2J"}})
	wantCode(t, err, codes.InvalidArgument, "webhook.description")
	if _, err := b.webhooks().CreateWebhook(ctx, &credbrokerv1.CreateWebhookRequest{WebhookId: "dup", Webhook: &credbrokerv1.Webhook{Url: "https://hooks.example.com/"}}); err != nil {
		t.Fatal(err)
	}
	_, err = b.webhooks().CreateWebhook(ctx, &credbrokerv1.CreateWebhookRequest{WebhookId: "dup", Webhook: &credbrokerv1.Webhook{Url: "https://hooks.example.com/"}})
	wantCode(t, err, codes.AlreadyExists, "")

	// Allowed by configuration, they are taken.
	cfg2, fake2, logs2 := newConfig(t)
	cfg2.Webhooks.AllowLinkLocal = true
	allowing := startWith(t, cfg2, fake2, logs2)
	if _, err := allowing.webhooks().CreateWebhook(ctx, &credbrokerv1.CreateWebhookRequest{WebhookId: "metadata", Webhook: &credbrokerv1.Webhook{Url: "https://169.254.169.254/"}}); err != nil {
		t.Fatalf("with --webhook-allow-link-local: %v", err)
	}

	// A caller that is not an admin manages no webhooks.
	_, err = credbrokerv1.NewWebhookServiceClient(b.dial(t, b.keys.svc, nil)).ListWebhooks(ctx, &credbrokerv1.ListWebhooksRequest{})
	wantCode(t, err, codes.PermissionDenied, "")
}

// On a cluster, one replica at a time delivers: each event reaches the
// receiver once, whichever replica made the change.
func TestWebhookDeliveredOnceAcrossReplicas(t *testing.T) {
	rs, _ := startReplicas(t, 3, 1, func(_ int, cfg *server.Config) { webhookConfig(cfg) })
	r := newReceiver(t)
	rs[0].createWebhook(t, "ops", r, credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED)
	for i := range 6 {
		rs[i%3].link(t, fmt.Sprintf("a%d", i))
	}
	waitFor(t, 20*time.Second, func() error {
		if got, _ := r.got(); len(got) < 6 {
			return fmt.Errorf("delivered %v", got)
		}
		return nil
	})
	time.Sleep(500 * time.Millisecond) // time for a second delivery, were there one
	got, attempts := r.got()
	seen := map[string]bool{}
	for _, d := range got {
		if seen[d.id] {
			t.Fatalf("event %s delivered twice: %v", d.id, got)
		}
		seen[d.id] = true
	}
	if len(got) != 6 || attempts != 6 {
		t.Fatalf("%d deliveries in %d attempts, want 6 in 6", len(got), attempts)
	}
}

// Events deleted (--event-retention) before a receiver that was down took
// them are noted once, as given up, and the next kept one is delivered.
func TestWebhookNotesEventsDeletedBeforeDelivery(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	webhookConfig(&cfg)
	b := startWith(t, cfg, fake, logs)
	r := newReceiver(t)
	b.createWebhook(t, "ops", r, credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED)
	r.set(func(w http.ResponseWriter) { w.WriteHeader(http.StatusServiceUnavailable) })
	for _, id := range []string{"a1", "a2", "a3"} {
		b.link(t, id)
	}
	waitFor(t, 10*time.Second, func() error {
		if d := b.webhook(t, "ops").GetDelivery(); d.GetFailedAttempts() == 0 {
			return fmt.Errorf("delivery: %v", d)
		}
		return nil
	})
	b.stop()
	b.cfg.Events.Retention = time.Nanosecond // the relay deletes all but the newest when it starts
	b = startWith(t, b.cfg, b.fake, b.logs)
	deleted := "2 events were deleted (--event-retention) before they could be delivered"
	waitFor(t, 10*time.Second, func() error { // the receiver still down
		attempts := b.webhook(t, "ops").GetDelivery().GetLastAttempts()
		for _, a := range attempts {
			if a.GetError() == deleted && a.GetGaveUp() {
				return nil
			}
		}
		return fmt.Errorf("attempts: %v", attempts)
	})
	r.set(nil)
	waitFor(t, 10*time.Second, func() error {
		if got, _ := r.got(); len(got) != 1 || got[0].account != "accounts/a3" {
			return fmt.Errorf("delivered %v", got)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond) // time to note the deletion twice, were it noted at every turn
	noted := 0
	for _, a := range b.webhook(t, "ops").GetDelivery().GetLastAttempts() {
		if a.GetError() == deleted {
			noted++
		}
	}
	if noted != 1 {
		t.Fatalf("the deletion noted %d times: %v", noted, b.webhook(t, "ops").GetDelivery())
	}
}

// A webhook deleted and made again under its id while a delivery to the
// first was under way is another webhook: it starts clean, with the events
// from its own creation on, and its deliveries do not wait for the first
// one's retries.
func TestWebhookMadeAgainUnderItsID(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	webhookConfig(&cfg)
	cfg.Webhooks.Timeout = 3 * time.Second
	cfg.Webhooks.MinBackoff, cfg.Webhooks.MaxBackoff = time.Hour, time.Hour // the first one's retry would never come
	b := startWith(t, cfg, fake, logs)
	old, fresh := newReceiver(t), newReceiver(t)
	b.createWebhook(t, "ops", old, credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED)
	answering := make(chan struct{})
	old.set(func(w http.ResponseWriter) { <-answering; w.WriteHeader(http.StatusInternalServerError) })
	b.link(t, "a1")
	waitFor(t, 10*time.Second, func() error {
		if _, n := old.got(); n == 0 {
			return errors.New("no delivery under way")
		}
		return nil
	})
	if _, err := b.webhooks().DeleteWebhook(context.Background(), &credbrokerv1.DeleteWebhookRequest{Name: "webhooks/ops"}); err != nil {
		t.Fatal(err)
	}
	b.createWebhook(t, "ops", fresh, credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED)
	close(answering) // the first one's attempt fails now, after the new one was made
	b.link(t, "a2")
	waitFor(t, 10*time.Second, func() error {
		if got, _ := fresh.got(); len(got) != 1 || got[0].account != "accounts/a2" {
			return fmt.Errorf("the new webhook got %v", got)
		}
		return nil
	})
	waitFor(t, 10*time.Second, func() error { // stored once the receiver has answered
		if d := b.webhook(t, "ops").GetDelivery(); d.GetFailedAttempts() != 0 || len(d.GetLastAttempts()) != 1 || d.GetLastAttempts()[0].GetStatusCode() != 204 {
			return fmt.Errorf("the new webhook's deliveries: %v", d)
		}
		return nil
	})
	if _, n := old.got(); n != 1 {
		t.Fatalf("the deleted webhook's URL got %d requests", n)
	}
}
