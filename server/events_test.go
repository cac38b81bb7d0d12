package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	clientv3 "go.etcd.io/etcd/client/v3"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// watcher reads a WatchEvents stream.
type watcher struct {
	stream grpc.ServerStreamingClient[credbrokerv1.WatchEventsResponse]
	cancel func()
	// last is the resume token of the last response read.
	last string
	// seen is every response read, as JSON, for the canary scans.
	seen []string
}

// watchEvents starts watching on conn and waits until the watch is in
// place (its headers came), so that every change after it is seen.
func watchEvents(t *testing.T, conn *grpc.ClientConn, req *credbrokerv1.WatchEventsRequest) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := credbrokerv1.NewEventServiceClient(conn).WatchEvents(ctx, req)
	if err == nil {
		_, err = stream.Header()
	}
	if err != nil {
		t.Fatalf("WatchEvents: %v", err)
	}
	return &watcher{stream: stream, cancel: cancel}
}

// next is the next event (progress responses are skipped), or fails the
// test after limit.
func (w *watcher) next(t *testing.T, limit time.Duration) *credbrokerv1.Event {
	t.Helper()
	type got struct {
		resp *credbrokerv1.WatchEventsResponse
		err  error
	}
	for {
		ch := make(chan got, 1)
		go func() {
			resp, err := w.stream.Recv()
			ch <- got{resp, err}
		}()
		select {
		case g := <-ch:
			if g.err != nil {
				t.Fatalf("WatchEvents: %v", g.err)
			}
			w.last = g.resp.GetResumeToken()
			w.seen = append(w.seen, protojson.Format(g.resp))
			if g.resp.GetEvent() != nil {
				return g.resp.GetEvent()
			}
		case <-time.After(limit):
			w.cancel()
			t.Fatalf("no event within %s; before:\n%s", limit, strings.Join(w.seen[max(0, len(w.seen)-5):], "\n"))
		}
	}
}

// until reads events until one of kind about name comes, and returns it.
func (w *watcher) until(t *testing.T, kind credbrokerv1.EventKind, name string) *credbrokerv1.Event {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		e := w.next(t, time.Until(deadline))
		if e.GetKind() == kind && (e.GetAccount() == name || e.GetCallerKey() == name) {
			return e
		}
	}
}

// Every kind of event, each made by a real change on a real broker, comes
// to an admin's watch with what an admin sees in GetAccount, and never a
// secret, key or token.
func TestEventsOfEveryKind(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	cfg.Tokens.RefreshMargin = time.Second
	cfg.Tokens.ScanInterval = 50 * time.Millisecond
	cfg.Tokens.RejectedRecheck = 100 * time.Millisecond
	b := startWith(t, cfg, fake, logs)
	b.fake.SetTokenTTL(32 * time.Second) // 2 s after JumpCloud's 30 s margin: renewed about every second
	ctx := context.Background()
	w := watchEvents(t, b.conn, &credbrokerv1.WatchEventsRequest{})

	b.link(t, "acme")
	e := w.until(t, credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED, "accounts/acme")
	if e.GetId() == "" || e.GetPrincipal() != "callerKeys/bootstrap-admin" || e.GetTime() == nil {
		t.Fatalf("linked: %v", e)
	}

	b.fake.AddClientSecret(clientID, newSecret)
	expire := time.Now().Add(90 * 24 * time.Hour).Truncate(time.Second)
	if _, err := b.accounts.AddAccountSecret(ctx, &credbrokerv1.AddAccountSecretRequest{Name: "accounts/acme", Secret: newSecret, ExpireTime: timestamppb.New(expire)}); err != nil {
		t.Fatal(err)
	}
	e = w.until(t, credbrokerv1.EventKind_EVENT_KIND_SECRET_ADDED, "accounts/acme")
	if e.GetSecret().GetSecretId() != secretID(newSecret) || !e.GetSecret().GetExpireTime().AsTime().Equal(expire) {
		t.Fatalf("secret added: %v", e)
	}
	if _, err := b.accounts.RemoveAccountSecret(ctx, &credbrokerv1.RemoveAccountSecretRequest{Name: "accounts/acme", SecretId: secretID(clientSecret)}); err != nil {
		t.Fatal(err)
	}
	if e = w.until(t, credbrokerv1.EventKind_EVENT_KIND_SECRET_REMOVED, "accounts/acme"); e.GetSecret().GetSecretId() != secretID(clientSecret) {
		t.Fatalf("secret removed: %v", e)
	}

	// The provider rejects the secret at the next renewal: the account
	// needs attention; then accepts it again, and the account recovers.
	b.fake.RevokeClientSecret(clientID, newSecret)
	e = w.until(t, credbrokerv1.EventKind_EVENT_KIND_SECRET_REJECTED, "accounts/acme")
	if e.GetSecret().GetSecretId() != secretID(newSecret) || e.GetLastError().GetReason() != credbrokerv1.ErrorReason_CREDENTIALS_REJECTED {
		t.Fatalf("secret rejected: %v", e)
	}
	e = w.until(t, credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_STATE_CHANGED, "accounts/acme")
	if e.GetOldState() != credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE || e.GetNewState() != credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION ||
		e.GetLastError().GetReason() != credbrokerv1.ErrorReason_CREDENTIALS_REJECTED || e.GetPrincipal() != "credbroker" {
		t.Fatalf("state changed: %v", e)
	}
	b.fake.AddClientSecret(clientID, newSecret)
	e = w.until(t, credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_STATE_CHANGED, "accounts/acme")
	if e.GetOldState() != credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION || e.GetNewState() != credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE || e.GetLastError() != nil {
		t.Fatalf("recovered: %v", e)
	}

	// A secret that expires within the warning window, then expires.
	soon := jumpCloudRequest("soon")
	expire = time.Now().Add(2 * time.Second)
	soon.SecretExpireTime = timestamppb.New(expire)
	if _, err := b.accounts.CreateAccount(ctx, soon); err != nil {
		t.Fatal(err)
	}
	if e = w.until(t, credbrokerv1.EventKind_EVENT_KIND_SECRET_EXPIRING, "accounts/soon"); !e.GetCredentialsExpireTime().AsTime().Equal(expire) {
		t.Fatalf("expiring: %v", e)
	}
	if e = w.until(t, credbrokerv1.EventKind_EVENT_KIND_SECRET_EXPIRED, "accounts/soon"); e.GetSecret().GetSecretId() != secretID(clientSecret) || !e.GetSecret().GetExpireTime().AsTime().Equal(expire) {
		t.Fatalf("expired: %v", e)
	}

	key, err := b.callers.CreateCallerKey(ctx, &credbrokerv1.CreateCallerKeyRequest{KeyId: "ci", CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_CALLER}})
	if err != nil {
		t.Fatal(err)
	}
	w.until(t, credbrokerv1.EventKind_EVENT_KIND_CALLER_KEY_CREATED, "callerKeys/ci")
	if _, err := b.callers.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/ci"}); err != nil {
		t.Fatal(err)
	}
	w.until(t, credbrokerv1.EventKind_EVENT_KIND_CALLER_KEY_REVOKED, "callerKeys/ci")
	if _, err := b.accounts.DeleteAccount(ctx, &credbrokerv1.DeleteAccountRequest{Name: "accounts/soon"}); err != nil {
		t.Fatal(err)
	}
	w.until(t, credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_DELETED, "accounts/soon")

	// A record changed on disk while the broker was stopped: one event,
	// however often the broker starts.
	resume := w.last
	b.stop()
	editRecord(t, b.cfg.DataDir, "accounts", "acme", `"display_name":"Acme acme"`, `"display_name":"Evil"`)
	b = startWith(t, b.cfg, b.fake, b.logs)
	b = b.restart(t)
	w2 := watchEvents(t, b.conn, &credbrokerv1.WatchEventsRequest{ResumeToken: resume})
	if e = w2.until(t, credbrokerv1.EventKind_EVENT_KIND_INTEGRITY_CHECK_FAILED, "accounts/acme"); e.GetPrincipal() != "credbroker" {
		t.Fatalf("integrity: %v", e)
	}
	b.link(t, "after")
	for e := w2.next(t, 10*time.Second); e.GetAccount() != "accounts/after"; e = w2.next(t, 10*time.Second) {
		if e.GetKind() == credbrokerv1.EventKind_EVENT_KIND_INTEGRITY_CHECK_FAILED {
			t.Fatalf("a second integrity event for one tampered record: %v", e)
		}
	}

	seen := strings.Join(append(w.seen, w2.seen...), "\n")
	if len(w.seen) < 12 {
		t.Fatalf("the scan would prove little: %d responses", len(w.seen))
	}
	canaries := []string{clientSecret, newSecret, key.GetKey(), b.keys.admin, b.keys.svc}
	if tok := b.fake.LastToken(); tok != "" {
		canaries = append(canaries, tok)
	}
	assertAbsent(t, "the events", []byte(seen), canaries...)
}

// A watcher that resumes from the last token it handled gets every event
// after it, none twice, across a restart of the broker.
func TestWatchEventsResumes(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	w := watchEvents(t, b.conn, &credbrokerv1.WatchEventsRequest{Kinds: []credbrokerv1.EventKind{credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED}})
	b.link(t, "a1")
	w.until(t, credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED, "accounts/a1")
	w.cancel()
	resume := w.last

	for i := 2; i <= 4; i++ {
		b.link(t, fmt.Sprintf("a%d", i))
	}
	b = b.restart(t)
	b.link(t, "a5")
	w = watchEvents(t, b.conn, &credbrokerv1.WatchEventsRequest{ResumeToken: resume, Kinds: []credbrokerv1.EventKind{credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED}})
	for i := 2; i <= 5; i++ {
		if e := w.next(t, 10*time.Second); e.GetAccount() != fmt.Sprintf("accounts/a%d", i) || e.GetKind() != credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED {
			t.Fatalf("event %d after resuming: %v", i, e)
		}
	}

	for _, tc := range []struct {
		token  string
		code   codes.Code
		reason string
	}{
		{"not-a-token", codes.InvalidArgument, "resume_token"},
		{"AAAAAAAAAAAAAAAAAAAAAA", codes.InvalidArgument, "resume_token"}, // another database's
	} {
		_, err := recvOnce(b.conn, &credbrokerv1.WatchEventsRequest{ResumeToken: tc.token})
		wantCode(t, err, tc.code, tc.reason)
	}
	_, err := recvOnce(b.conn, &credbrokerv1.WatchEventsRequest{Kinds: []credbrokerv1.EventKind{99}})
	wantCode(t, err, codes.InvalidArgument, "kinds")
	_, err = recvOnce(b.conn, &credbrokerv1.WatchEventsRequest{Accounts: []string{"acme"}})
	wantCode(t, err, codes.InvalidArgument, "accounts")
}

// A resume token older than the events the broker keeps is refused with
// EVENTS_EXPIRED, not answered with a gap.
func TestWatchEventsExpired(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	b := startWith(t, cfg, fake, logs)
	w := watchEvents(t, b.conn, &credbrokerv1.WatchEventsRequest{})
	b.link(t, "a1")
	w.until(t, credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED, "accounts/a1")
	b.link(t, "a2")
	w.until(t, credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED, "accounts/a2")
	b.link(t, "a3")
	w.until(t, credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED, "accounts/a3")
	w.cancel()
	b.stop()
	b.cfg.Events.Retention = time.Nanosecond // the relay prunes when it starts
	b = startWith(t, b.cfg, b.fake, b.logs)
	var err error
	waitFor(t, 10*time.Second, func() error {
		_, err = recvOnce(b.conn, &credbrokerv1.WatchEventsRequest{ResumeToken: resumeOf(t, w, 0)})
		if err == nil {
			return errors.New("not pruned yet")
		}
		return nil
	})
	wantCode(t, err, codes.FailedPrecondition, "EVENTS_EXPIRED")
}

// resumeOf is the resume token of the i-th response w read.
func resumeOf(t *testing.T, w *watcher, i int) string {
	t.Helper()
	var resp credbrokerv1.WatchEventsResponse
	if err := protojson.Unmarshal([]byte(w.seen[i]), &resp); err != nil {
		t.Fatal(err)
	}
	return resp.GetResumeToken()
}

// recvOnce opens a watch and reads its first response (or its error).
func recvOnce(conn *grpc.ClientConn, req *credbrokerv1.WatchEventsRequest) (*credbrokerv1.WatchEventsResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	stream, err := credbrokerv1.NewEventServiceClient(conn).WatchEvents(ctx, req)
	if err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return nil, errors.New("the stream ended")
	}
	if ctx.Err() != nil {
		return nil, nil // no error and no event within the time: a watch in place
	}
	return resp, err
}

// A caller sees the events of the accounts that grant it, and nothing
// else: not other accounts', not caller keys'.
func TestWatchEventsForCallers(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	cfg.Tokens.RefreshMargin = time.Second
	cfg.Tokens.ScanInterval = 50 * time.Millisecond
	b := startWith(t, cfg, fake, logs)
	b.fake.SetTokenTTL(32 * time.Second) // renewed about every second
	svc := b.dial(t, b.keys.svc, nil)
	w := watchEvents(t, svc, &credbrokerv1.WatchEventsRequest{})
	if _, err := b.accounts.CreateAccount(context.Background(), jumpCloudRequest("other")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.callers.CreateCallerKey(context.Background(), &credbrokerv1.CreateCallerKeyRequest{KeyId: "ci", CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_CALLER}}); err != nil {
		t.Fatal(err)
	}
	b.link(t, "mine") // granted to svc after it is linked
	// The provider rejects the secret at the next renewal: svc sees that,
	// as GetToken would show it: the error code, not the description.
	b.fake.RevokeClientSecret(clientID, clientSecret)
	// The link itself came before the grant: the first event svc may see
	// is the rejection.
	e := w.next(t, 10*time.Second)
	if e.GetKind() != credbrokerv1.EventKind_EVENT_KIND_SECRET_REJECTED || e.GetAccount() != "accounts/mine" || e.GetLastError().GetProviderError() != "invalid_client" ||
		e.GetLastError().GetMessage() != "" || e.GetLastError().GetProviderErrorDescription() != "" || e.GetSecret().GetSecretId() != "" || e.GetPrincipal() != "credbroker" {
		t.Fatalf("the caller's first event: %v", e)
	}
	if e = w.next(t, 10*time.Second); e.GetKind() != credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_STATE_CHANGED || e.GetLastError().GetMessage() != "" {
		t.Fatalf("the caller's second event: %v", e)
	}
	if _, err := b.accounts.DeleteAccount(context.Background(), &credbrokerv1.DeleteAccountRequest{Name: "accounts/mine"}); err != nil {
		t.Fatal(err)
	}
	if e = w.next(t, 10*time.Second); e.GetKind() != credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_DELETED || e.GetAccount() != "accounts/mine" || e.GetPrincipal() != "" {
		t.Fatalf("the caller's third event: %v", e)
	}

	// Revoking the caller's key ends its watch.
	if _, err := b.callers.RevokeCallerKey(context.Background(), &credbrokerv1.RevokeCallerKeyRequest{Name: svcPrincipal}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.stream.Recv()
		done <- err
	}()
	select {
	case err := <-done:
		wantCode(t, err, codes.Unauthenticated, "")
	case <-time.After(10 * time.Second):
		t.Fatal("the watch of a revoked key goes on")
	}
}

// On a cluster, every replica streams the same events, each change's
// once, whichever replica made it; a watcher whose replica is killed
// resumes on another with no gap; and events keep coming when the replica
// that relays them is killed.
func TestEventsAcrossReplicas(t *testing.T) {
	rs, _ := startReplicas(t, 3, 1, nil)
	w := watchEvents(t, rs[1].conn, &credbrokerv1.WatchEventsRequest{Kinds: []credbrokerv1.EventKind{credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED}})
	rs[0].link(t, "a0")
	rs[2].link(t, "a2")
	seen := map[string]string{} // event id: account
	take := func(w *watcher, want string) {
		t.Helper()
		e := w.next(t, 20*time.Second)
		if e.GetAccount() != want {
			t.Fatalf("got %v, want an event about %s", e, want)
		}
		if prev, ok := seen[e.GetId()]; ok {
			t.Fatalf("event %s (%s) came twice", e.GetId(), prev)
		}
		seen[e.GetId()] = e.GetAccount()
	}
	take(w, "accounts/a0")
	take(w, "accounts/a2")

	// The watcher's replica dies; a change is made meanwhile.
	rs[1].stop()
	rs[0].link(t, "a3")
	w = watchEvents(t, rs[2].conn, &credbrokerv1.WatchEventsRequest{ResumeToken: w.last, Kinds: []credbrokerv1.EventKind{credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED}})
	take(w, "accounts/a3")

	// Every replica that relays dies but one: events still come.
	rs[0].stop()
	rs[2].link(t, "a4")
	take(w, "accounts/a4")
}

// A broker that shuts down ends its watches at once, with UNAVAILABLE,
// rather than waiting for them as for other calls.
func TestShutdownEndsWatches(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	w := watchEvents(t, b.dial(t, b.keys.admin, nil), &credbrokerv1.WatchEventsRequest{})
	stopped := make(chan struct{})
	go func() { b.stop(); close(stopped) }()
	_, err := w.stream.Recv()
	if st := wantCode(t, err, codes.Unavailable, ""); !strings.Contains(st.Message(), "shutting down") {
		t.Fatalf("the watch ended with %v", err)
	}
	<-stopped
}

// A record changed in etcd behind the brokers' backs makes one
// integrity_check_failed event, however many replicas read it.
func TestIntegrityEventOfARecordChangedInEtcd(t *testing.T) {
	rs, cluster := startReplicas(t, 2, 1, nil)
	rs[0].link(t, "acme")
	w := watchEvents(t, rs[1].conn, &credbrokerv1.WatchEventsRequest{Kinds: []credbrokerv1.EventKind{credbrokerv1.EventKind_EVENT_KIND_INTEGRITY_CHECK_FAILED, credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED}})
	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	k := "/credbroker/data/accounts/acme"
	got, err := cli.Get(ctx, k)
	if err != nil || len(got.Kvs) != 1 {
		t.Fatalf("the account's record in etcd: %v %v", got, err)
	}
	if _, err := cli.Put(ctx, k, strings.Replace(string(got.Kvs[0].Value), `"display_name":"Acme acme"`, `"display_name":"Evil"`, 1)); err != nil {
		t.Fatal(err)
	}
	if e := w.until(t, credbrokerv1.EventKind_EVENT_KIND_INTEGRITY_CHECK_FAILED, "accounts/acme"); e.GetPrincipal() != "credbroker" {
		t.Fatalf("integrity: %v", e)
	}
	rs[1].link(t, "after")
	for e := w.next(t, 10*time.Second); e.GetAccount() != "accounts/after"; e = w.next(t, 10*time.Second) {
		t.Fatalf("a second integrity event for one change: %v", e)
	}
}

// A watch whose filters pass nothing is told its position all the same
// (--event-retention would otherwise age its token out): resuming from
// that position sends only what came after it.
func TestWatchEventsProgress(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	cfg.Events.Progress = 100 * time.Millisecond
	b := startWith(t, cfg, fake, logs)
	w := watchEvents(t, b.conn, &credbrokerv1.WatchEventsRequest{Kinds: []credbrokerv1.EventKind{credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_DELETED}})
	first := w.progress(t)
	b.link(t, "a1") // not a deletion: moves the position on, shows nothing
	var moved string
	waitFor(t, 10*time.Second, func() error {
		if moved = w.progress(t); moved == first {
			return errors.New("the position did not move")
		}
		return nil
	})
	w.cancel()
	// From the moved position, the link is behind: only the deletion comes.
	if _, err := b.accounts.DeleteAccount(context.Background(), &credbrokerv1.DeleteAccountRequest{Name: "accounts/a1"}); err != nil {
		t.Fatal(err)
	}
	w = watchEvents(t, b.conn, &credbrokerv1.WatchEventsRequest{ResumeToken: moved})
	if e := w.next(t, 10*time.Second); e.GetKind() != credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_DELETED {
		t.Fatalf("the first event after the moved position: %v", e)
	}
}

// progress reads responses until one without an event, and returns its
// resume token.
func (w *watcher) progress(t *testing.T) string {
	t.Helper()
	for range 100 {
		resp, err := w.stream.Recv()
		if err != nil {
			t.Fatalf("WatchEvents: %v", err)
		}
		if resp.GetEvent() == nil {
			return resp.GetResumeToken()
		}
	}
	t.Fatal("no progress response")
	return ""
}
