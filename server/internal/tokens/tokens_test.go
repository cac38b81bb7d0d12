package tokens

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

const clientSecret = "tokens-test-secret"

// clock is a settable clock for the manager's decisions.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type harness struct {
	fake   *jumpcloudfake.Fake
	store  *store.Store
	master *keyring.MasterKey
	keys   *keyring.Keyring
	prov   *provider.Client
	clock  *clock
	cfg    Config
	path   string
	// answerLag is how long the provider's answers take to reach the
	// manager (their tokens are that old when they arrive).
	answerLag atomic.Int64
}

func newHarness(t testing.TB, handler func(http.Handler) http.Handler) *harness {
	t.Helper()
	h := &harness{fake: jumpcloudfake.New("sa", clientSecret), clock: &clock{t: time.Now()}}
	var srvHandler http.Handler = h.fake
	if handler != nil {
		srvHandler = handler(h.fake)
	}
	srv := httptest.NewServer(srvHandler)
	t.Cleanup(srv.Close)
	h.prov = provider.New(provider.Config{
		Endpoints: provider.Endpoints{JumpCloudTokenURLUS: srv.URL + jumpcloudfake.TokenPath, JumpCloudAPIURLUS: "https://api.test/api"},
		Timeout:   2 * time.Second,
		Now:       func() time.Time { return h.clock.Now().Add(-time.Duration(h.answerLag.Load())) },
	})
	keyText, _ := keyring.GenerateMasterKey()
	h.master, _ = keyring.ParseMasterKey(keyText)
	mac, _, err := h.master.NewMACKey()
	if err != nil {
		t.Fatal(err)
	}
	h.keys = keyring.New(keyring.NewMasters(h.master), mac)
	h.path = filepath.Join(t.TempDir(), "db")
	if h.store, err = store.Open(h.path, time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.store.Close() })
	if _, err := h.store.Authenticate(keyring.NewMasters(h.master), false, store.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	h.cfg = Config{Now: h.clock.Now, BackoffMin: time.Second, BackoffMax: time.Minute, RejectedRecheck: 10 * time.Minute, ScanInterval: 5 * time.Millisecond}
	return h
}

// addAccount stores an account with no token, as if its token had been lost.
func (h *harness) addAccount(t testing.TB, id string) {
	t.Helper()
	h.addAccountWith(t, id, provider.KindJumpCloudServiceAccount, testSecret{value: clientSecret})
}

// testSecret is a secret for addAccountWith; its ID is its value.
type testSecret struct {
	value              string
	create, expireTime time.Time
}

// addAccountWith stores an account of the given kind with these secrets
// and no token.
func (h *harness) addAccountWith(t testing.TB, id string, kind provider.Kind, secrets ...testSecret) {
	t.Helper()
	key, wrapped, err := h.master.NewDataKey(id)
	if err != nil {
		t.Fatal(err)
	}
	a := store.Account{ID: id, Provider: string(kind), ClientID: "sa", Region: provider.RegionUS, OrgID: "5a1234567890abcdef123456", WrappedKey: wrapped}
	for _, s := range secrets {
		sealed, _ := key.Seal(keyring.FieldClientSecret, []byte(s.value))
		a.Secrets = append(a.Secrets, store.Secret{ID: s.value, Sealed: sealed, CreateTime: s.create, ExpireTime: s.expireTime})
	}
	if err := h.store.CreateAccount(a, store.TokenState{State: string(StateActive)}, store.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) manager(t testing.TB) *Manager {
	t.Helper()
	m := New(h.cfg, h.store, h.keys, h.prov)
	all, err := h.store.All()
	if err != nil {
		t.Fatal(err)
	}
	m.Replace(all)
	return m
}

func TestConcurrentColdCallsShareOneRequest(t *testing.T) {
	h := newHarness(t, nil)
	h.fake.SetBehaviour(jumpcloudfake.Slow) // keep the request open while callers pile up
	h.fake.SetDelay(200 * time.Millisecond)
	h.addAccount(t, "acme")
	m := h.manager(t)

	var wg sync.WaitGroup
	tokens := make([]string, 200)
	errs := make([]error, 200)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			is, err := m.Get(context.Background(), "acme", 0)
			errs[i] = err
			if err == nil {
				tokens[i] = is.AccessToken.Reveal()
			}
		}()
	}
	wg.Wait()
	for i := range 200 {
		if errs[i] != nil || tokens[i] == "" || tokens[i] != tokens[0] {
			t.Fatalf("call %d: err %v, got the shared token: %v", i, errs[i], tokens[i] != "" && tokens[i] == tokens[0])
		}
	}
	if n := h.fake.Requests(); n != 1 {
		t.Fatalf("fake saw %d requests, want 1", n)
	}
	// Hot path: no more requests, and the account's API base and org header come along.
	is, err := m.Get(context.Background(), "acme", time.Minute)
	if err != nil || h.fake.Requests() != 1 || is.APIBaseURL != "https://api.test/api" || is.Headers["x-org-id"] != "5a1234567890abcdef123456" {
		t.Fatalf("cached Get = %+v, %v after %d requests", is, err, h.fake.Requests())
	}
	if st, _ := m.Status("acme"); st.State != StateActive || st.LastTokenTime.IsZero() {
		t.Fatalf("status = %+v", st)
	}
}

func TestMinTTL(t *testing.T) {
	h := newHarness(t, nil)
	h.addAccount(t, "acme")
	m := h.manager(t)
	first, err := m.Get(context.Background(), "acme", 0)
	if err != nil {
		t.Fatal(err)
	}
	// 10 minutes later the token has ~50 minutes left: asking for 55 refreshes it.
	h.clock.Advance(10 * time.Minute)
	second, err := m.Get(context.Background(), "acme", 55*time.Minute)
	if err != nil || second.AccessToken.Reveal() == first.AccessToken.Reveal() || h.fake.Requests() != 2 {
		t.Fatalf("Get(min_ttl 55m) = %v, %v after %d requests; want a new token", second, err, h.fake.Requests())
	}
	// Longer than any token lives: refused without asking the provider.
	var tooLong *MinTTLTooLongError
	if _, err := m.Get(context.Background(), "acme", 2*time.Hour); !errors.As(err, &tooLong) || tooLong.Max != time.Hour-30*time.Second {
		t.Fatalf("Get(min_ttl 2h) err = %v, want MinTTLTooLongError{59m30s}", err)
	}
	if h.fake.Requests() != 2 {
		t.Fatalf("min_ttl too long reached the provider")
	}
}

// A token that expired on its way to its caller (the provider answered
// slower than its tokens live) is asked for once more; if the next one
// is too, the caller hears UNAVAILABLE, never about a min_ttl it did not
// ask for.
func TestTokenThatExpiredOnItsWayIsAskedForAgain(t *testing.T) {
	var slowAnswers atomic.Int32 // the next ones answer an hour late
	var h *harness
	h = newHarness(t, func(fake http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			lag := time.Duration(0)
			if slowAnswers.Add(-1) >= 0 {
				lag = time.Hour
			}
			h.answerLag.Store(int64(lag))
			fake.ServeHTTP(w, r)
		})
	})
	h.addAccount(t, "acme")
	m := h.manager(t)

	slowAnswers.Store(2)
	if _, err := m.Get(context.Background(), "acme", 0); status.Code(err) != codes.Unavailable || h.fake.Requests() != 2 {
		t.Fatalf("two tokens that expired on their way: %v after %d requests, want UNAVAILABLE after 2", err, h.fake.Requests())
	}
	slowAnswers.Store(1)
	is, err := m.Get(context.Background(), "acme", 0)
	if err != nil || is.Expiry.Sub(h.clock.Now()) <= 0 || h.fake.Requests() != 4 {
		t.Fatalf("one token that expired on its way, then one in time: %v, %v after %d requests, want a token after 4", is, err, h.fake.Requests())
	}
}

// A caller looping with a min_ttl the cached token just misses forces at
// most one new token per interval; a min_ttl no token meets is refused
// without a request, also after a restart with no usable token cached.
func TestMinTTLCannotForceRequests(t *testing.T) {
	h := newHarness(t, nil)
	h.addAccount(t, "acme")
	m := h.manager(t)
	ctx := context.Background()
	if _, err := m.Get(ctx, "acme", 0); err != nil {
		t.Fatal(err)
	}
	const justUnderLifetime = time.Hour - 31*time.Second
	h.clock.Advance(2 * time.Second)
	if _, err := m.Get(ctx, "acme", justUnderLifetime); err != nil || h.fake.Requests() != 2 {
		t.Fatalf("first forced refresh: %v after %d requests, want a new token", err, h.fake.Requests())
	}
	var refreshed, limited int
	for range 20 { // 40s in steps of 2s: each time the cached token no longer lasts min_ttl
		h.clock.Advance(2 * time.Second)
		_, err := m.Get(ctx, "acme", justUnderLifetime)
		var limitedErr *RefreshLimitedError
		switch {
		case err == nil:
			refreshed++
		case errors.As(err, &limitedErr) && limitedErr.RetryAt.After(h.clock.Now()):
			limited++
		default:
			t.Fatalf("Get(min_ttl %v) = %v", justUnderLifetime, err)
		}
	}
	if refreshed != 4 || limited != 16 || h.fake.Requests() != 2+refreshed {
		t.Fatalf("in 40s: %d new tokens, %d refused, %d requests; want one new token per 10s, the rest refused", refreshed, limited, h.fake.Requests())
	}
	// No token is fetched for a too long min_ttl: not now, and not after a
	// restart once the stored token has expired and been dropped.
	var tooLong *MinTTLTooLongError
	if _, err := m.Get(ctx, "acme", 2*time.Hour); !errors.As(err, &tooLong) || tooLong.Max != time.Hour-30*time.Second {
		t.Fatalf("Get(min_ttl 2h) = %v, want MinTTLTooLongError{59m30s}", err)
	}
	h.clock.Advance(2 * time.Hour)
	restarted := h.manager(t)
	if !restarted.Invalidate("acme", restarted.lookup("acme").current.Load()) {
		t.Fatal("the stored token was not dropped")
	}
	if _, err := restarted.Get(ctx, "acme", 2*time.Hour); !errors.As(err, &tooLong) || tooLong.Max != time.Hour-30*time.Second {
		t.Fatalf("after a restart, Get(min_ttl 2h) = %v, want MinTTLTooLongError{59m30s}", err)
	}
	if h.fake.Requests() != 6 {
		t.Fatalf("a min_ttl too long reached the provider (%d requests, want 6)", h.fake.Requests())
	}
}

func TestUnavailableServesCachedTokenThenBacksOff(t *testing.T) {
	h := newHarness(t, nil)
	h.addAccount(t, "acme")
	m := h.manager(t)
	good, err := m.Get(context.Background(), "acme", 0)
	if err != nil {
		t.Fatal(err)
	}
	h.fake.SetBehaviour(jumpcloudfake.ServerError)

	// A caller wanting more than what is left forces a refresh, which fails...
	h.clock.Advance(50 * time.Minute)
	var fe *FetchError
	var unav *provider.UnavailableError
	if _, err := m.Get(context.Background(), "acme", 30*time.Minute); !errors.As(err, &fe) || !errors.As(err, &unav) {
		t.Fatalf("err = %v, want FetchError wrapping UnavailableError", err)
	}
	if st, _ := m.Status("acme"); st.State != StateDegraded || st.LastError == nil || st.LastError.Reason != ReasonProviderUnavailable {
		t.Fatalf("status = %+v, want degraded", st)
	}
	// ...but the cached token is still served while valid.
	if is, err := m.Get(context.Background(), "acme", 0); err != nil || is.AccessToken.Reveal() != good.AccessToken.Reveal() {
		t.Fatalf("degraded Get = %v, %v; want the cached token", is, err)
	}
	// Once it has expired: UNAVAILABLE, and within the backoff window the
	// provider is not asked again.
	h.clock.Advance(10 * time.Minute)
	requests := h.fake.Requests()
	if _, err := m.Get(context.Background(), "acme", 0); !errors.As(err, &unav) {
		t.Fatalf("expired Get err = %v, want UnavailableError", err)
	}
	if _, err := m.Get(context.Background(), "acme", 0); !errors.As(err, &unav) {
		t.Fatalf("expired Get err = %v, want UnavailableError", err)
	}
	if h.fake.Requests() > requests+1 {
		t.Fatalf("backoff ignored: %d requests for two calls", h.fake.Requests()-requests)
	}
	// Recovery: after the backoff, the next call fetches and the account is active again.
	h.fake.SetBehaviour(jumpcloudfake.Normal)
	h.clock.Advance(2 * time.Minute)
	if _, err := m.Get(context.Background(), "acme", 0); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	if st, _ := m.Status("acme"); st.State != StateActive || st.LastError != nil {
		t.Fatalf("status after recovery = %+v", st)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	h := newHarness(t, nil)
	h.addAccount(t, "acme")
	m := h.manager(t)
	h.fake.SetBehaviour(jumpcloudfake.RateLimited)
	h.fake.SetRetryAfter("1800")

	var fe *FetchError
	if _, err := m.Get(context.Background(), "acme", 0); !errors.As(err, &fe) {
		t.Fatalf("err = %v, want FetchError", err)
	}
	if wait := fe.RetryAt.Sub(h.clock.Now()); wait < 30*time.Minute {
		t.Fatalf("retry in %v, want at least the 30m Retry-After", wait)
	}
	h.fake.SetBehaviour(jumpcloudfake.Normal)
	h.clock.Advance(29 * time.Minute)
	if _, err := m.Get(context.Background(), "acme", 0); err == nil || h.fake.Requests() != 1 {
		t.Fatalf("asked again inside Retry-After: err %v, %d requests", err, h.fake.Requests())
	}
	h.clock.Advance(2 * time.Minute)
	if _, err := m.Get(context.Background(), "acme", 0); err != nil || h.fake.Requests() != 2 {
		t.Fatalf("after Retry-After: err %v, %d requests", err, h.fake.Requests())
	}
}

func TestRejectedNeedsAttentionUntilProviderAcceptsAgain(t *testing.T) {
	h := newHarness(t, nil)
	h.addAccount(t, "acme")
	m := h.manager(t)
	h.fake.SetBehaviour(jumpcloudfake.RejectAll)

	var rej *provider.RejectedError
	for range 5 {
		if _, err := m.Get(context.Background(), "acme", 0); !errors.As(err, &rej) {
			t.Fatalf("err = %v, want RejectedError", err)
		}
	}
	if n := h.fake.Requests(); n != 1 {
		t.Fatalf("%d requests for 5 calls with rejected credentials, want 1", n)
	}
	st, _ := m.Status("acme")
	if st.State != StateNeedsAttention || st.LastError == nil || st.LastError.ProviderError != "invalid_client" {
		t.Fatalf("status = %+v", st)
	}
	// It survives a restart.
	if st2, _ := h.manager(t).Status("acme"); st2.State != StateNeedsAttention {
		t.Fatalf("status after reload = %+v", st2)
	}

	// The admin fixes it at the provider; the background refresher notices.
	h.fake.SetBehaviour(jumpcloudfake.Normal)
	h.clock.Advance(11 * time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	waitFor(t, func() bool { s, _ := m.Status("acme"); return s.State == StateActive })
	cancel()
	<-done
	if _, err := m.Get(context.Background(), "acme", 0); err != nil {
		t.Fatal(err)
	}
}

// countingPeak wraps the provider: peak is the most requests it answered
// at once, each taking delay.
func countingPeak(peak *atomic.Int32, delay time.Duration) func(http.Handler) http.Handler {
	var inflight atomic.Int32
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n := inflight.Add(1)
			defer inflight.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(delay)
			next.ServeHTTP(w, r)
		})
	}
}

func TestRefresherRenewsBeforeExpiryWithBoundedConcurrency(t *testing.T) {
	var peak atomic.Int32
	h := newHarness(t, countingPeak(&peak, 20*time.Millisecond))
	h.cfg.RefreshConcurrency = 2
	ids := []string{"a", "b", "c", "d", "e", "f"}
	for _, id := range ids {
		h.addAccount(t, id)
	}
	m := h.manager(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()

	// Cold accounts are filled without any caller asking.
	waitFor(t, func() bool { return h.fake.Requests() == len(ids) })
	before := map[string]string{}
	for _, id := range ids {
		is, err := m.Get(context.Background(), id, 0)
		if err != nil {
			t.Fatal(err)
		}
		before[id] = is.AccessToken.Reveal()
	}
	// 56 minutes on, every token is inside the 5-minute margin (with jitter) and is renewed.
	h.clock.Advance(56 * time.Minute)
	waitFor(t, func() bool {
		for _, id := range ids {
			if is, err := m.Get(context.Background(), id, 0); err != nil || is.AccessToken.Reveal() == before[id] {
				return false
			}
		}
		return true
	})
	cancel()
	<-done
	if n := h.fake.Requests(); n != 2*len(ids) {
		t.Fatalf("%d requests, want one fill and one renewal per account (%d)", n, 2*len(ids))
	}
	if p := peak.Load(); p > 2 || p < 1 {
		t.Fatalf("peak concurrent refreshes = %d, want 1..2", p)
	}
}

// A backlog larger than the refresher's slots is worked through as fast
// as the provider answers, not a slotful per scan: with one scan an hour,
// the scan at start fills every cold account, two at a time.
func TestRefresherWorksThroughABacklog(t *testing.T) {
	var peak atomic.Int32
	h := newHarness(t, countingPeak(&peak, 0))
	h.cfg.RefreshConcurrency = 2
	h.cfg.ScanInterval = time.Hour
	const accounts = 40
	for i := range accounts {
		h.addAccount(t, fmt.Sprintf("acct-%d", i))
	}
	m := h.manager(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	waitFor(t, func() bool { return h.fake.Requests() == accounts })
	cancel()
	<-done
	if p := peak.Load(); p > 2 {
		t.Fatalf("peak concurrent refreshes = %d, want at most 2", p)
	}
	if n := h.fake.Requests(); n != accounts {
		t.Fatalf("%d requests, want one per account (%d)", n, accounts)
	}
}

// Tokens fetched at the same moment are renewed over a quarter of their
// lifetime, each between three quarters of its life less the margin and
// the margin before it expires.
func TestRefreshTimesSpread(t *testing.T) {
	expiry := time.Date(2026, 1, 1, 1, 0, 0, 0, time.UTC)
	lo, hi := expiry.Add(-20*time.Minute), expiry.Add(-5*time.Minute)
	first, last := hi, lo
	for range 2000 {
		at := refreshTime(expiry, time.Hour, 5*time.Minute)
		if at.Before(lo) || at.After(hi) {
			t.Fatalf("refresh at %v, want between %v and %v", at, lo, hi)
		}
		if at.Before(first) {
			first = at
		}
		if at.After(last) {
			last = at
		}
	}
	if last.Sub(first) < 14*time.Minute {
		t.Fatalf("2,000 renewals fall within %v of each other, want spread over 15 minutes", last.Sub(first))
	}
	// A token that expired before it was obtained (as a clock may make one) is due now.
	if at := refreshTime(expiry, -time.Minute, 5*time.Minute); !at.Equal(expiry) {
		t.Fatalf("a token with a negative lifetime renewed at %v, want at its expiry %v", at, expiry)
	}
	// A short-lived token keeps half its life as the margin.
	if at := refreshTime(expiry, 2*time.Minute, 5*time.Minute); at.Before(expiry.Add(-90*time.Second)) || at.After(expiry.Add(-time.Minute)) {
		t.Fatalf("a 2-minute token renewed at %v before expiry, want 60-90s", expiry.Sub(at))
	}
}

func TestRestartReusesStoredToken(t *testing.T) {
	h := newHarness(t, nil)
	h.addAccount(t, "acme")
	first, err := h.manager(t).Get(context.Background(), "acme", 0)
	if err != nil {
		t.Fatal(err)
	}
	again, err := h.manager(t).Get(context.Background(), "acme", 0)
	if err != nil || again.AccessToken.Reveal() != first.AccessToken.Reveal() || h.fake.Requests() != 1 {
		t.Fatalf("after reload: %v, %v, %d requests; want the stored token and no request", again, err, h.fake.Requests())
	}
}

func TestRemove(t *testing.T) {
	h := newHarness(t, nil)
	h.addAccount(t, "acme")
	m := h.manager(t)
	if _, err := m.Get(context.Background(), "acme", 0); err != nil {
		t.Fatal(err)
	}
	m.Remove("acme")
	if _, err := m.Get(context.Background(), "acme", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after Remove: err = %v, want ErrNotFound", err)
	}
}

// waitFor polls cond; the test's own timeout bounds it.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for !cond() {
		time.Sleep(2 * time.Millisecond)
	}
}

// BenchmarkGetCacheHit is GetToken's hot path inside the broker, without gRPC.
func BenchmarkGetCacheHit(b *testing.B) {
	h := newHarness(b, nil)
	h.cfg.Now = time.Now // the test clock's mutex is not what production runs
	h.addAccount(b, "acme")
	m := h.manager(b)
	ctx := context.Background()
	if _, err := m.Get(ctx, "acme", 0); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := m.Get(ctx, "acme", time.Minute); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A manager loads many accounts at once (in parallel, see Replace): each
// serves the token stored for it, and no account's token is another's.
func TestManyAccountsLoadTheirOwnTokens(t *testing.T) {
	h := newHarness(t, nil)
	const n = 600
	for i := range n {
		h.addAccount(t, fmt.Sprintf("acct-%d", i))
	}
	first := h.manager(t)
	tokens := map[string]string{}
	for i := range n {
		id := fmt.Sprintf("acct-%d", i)
		is, err := first.Get(context.Background(), id, 0)
		if err != nil {
			t.Fatal(err)
		}
		tokens[id] = is.Token.AccessToken.Reveal()
	}
	requests := h.fake.Requests()
	second := h.manager(t)
	seen := map[string]bool{}
	for id, want := range tokens {
		is, err := second.Get(context.Background(), id, 0)
		if err != nil || is.Token.AccessToken.Reveal() != want || seen[want] {
			t.Fatalf("%s after a reload: %v, its own token %v, seen before %v", id, err, err == nil && is.Token.AccessToken.Reveal() == want, seen[want])
		}
		seen[want] = true
	}
	if h.fake.Requests() != requests {
		t.Fatalf("%d token requests after the reload, want none", h.fake.Requests()-requests)
	}
}

// watchFirst is a store whose TokenState read, once armed, is preceded by
// the watch bringing the manager that same state, as when another
// replica's token arrives while this one reads it.
type watchFirst struct {
	*store.Store
	m     *Manager
	armed atomic.Bool
}

func (w *watchFirst) TokenState(id string) (store.TokenState, error) {
	ts, err := w.Store.TokenState(id)
	if err == nil && w.armed.CompareAndSwap(true, false) {
		w.m.TokenStored(id, ts)
	}
	return ts, err
}

// A replica that takes the refresh lock as the watch brings the token the
// lock's last holder stored uses that token: it does not ask again.
func TestTokenWatchedWhileReadIsNotAskedForAgain(t *testing.T) {
	h := newHarness(t, nil)
	h.addAccount(t, "acme")
	w := &watchFirst{Store: h.store}
	m := New(h.cfg, w, h.keys, h.prov)
	w.m = m
	all, err := h.store.All()
	if err != nil {
		t.Fatal(err)
	}
	m.Replace(all)
	ctx := context.Background()
	if _, err := m.Get(ctx, "acme", 0); err != nil {
		t.Fatal(err)
	}
	// Both replicas' tokens expire; the other one renews first.
	h.clock.Advance(2 * time.Hour)
	other, err := h.manager(t).Get(ctx, "acme", 0)
	if err != nil {
		t.Fatal(err)
	}
	w.armed.Store(true)
	got, err := m.Get(ctx, "acme", 0)
	if err != nil {
		t.Fatal(err)
	}
	if w.armed.Load() {
		t.Fatal("the token state was not read: the test proves nothing")
	}
	if n := h.fake.Requests(); n != 2 || got.AccessToken.Reveal() != other.AccessToken.Reveal() {
		t.Fatalf("%d token requests (want 2), same token as the other replica's: %v", n, got.AccessToken.Reveal() == other.AccessToken.Reveal())
	}
}
