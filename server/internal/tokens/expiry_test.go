package tokens

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/store"
)

// expiryEvents are the stored audit events that warned about account id.
func expiryEvents(t *testing.T, st *store.Store, id string) []store.AuditEvent {
	t.Helper()
	var out []store.AuditEvent
	err := st.ScanAudit(store.AuditPos{}, func(_ store.AuditPos, ev store.AuditEvent) bool {
		if ev.Method == "secret_expiring" && ev.Resource == "accounts/"+id {
			out = append(out, ev)
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestExpiryWarnedOnceADayWithinTheWindow(t *testing.T) {
	h := newHarness(t, nil)
	var logs bytes.Buffer
	h.cfg.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	now := h.clock.Now()
	soon := now.Add(5 * 24 * time.Hour)
	h.addAccountWith(t, "soon", provider.KindJumpCloudServiceAccount, testSecret{value: clientSecret, expireTime: soon})
	h.addAccountWith(t, "later", provider.KindJumpCloudServiceAccount, testSecret{value: clientSecret, expireTime: now.Add(8 * 24 * time.Hour)})
	h.addAccountWith(t, "never", provider.KindJumpCloudServiceAccount, testSecret{value: clientSecret})
	// A secret that expires soon but has a successor that does not needs no warning.
	h.addAccountWith(t, "rotated", provider.KindJumpCloudServiceAccount,
		testSecret{value: "old", expireTime: now.Add(24 * time.Hour)}, testSecret{value: "new", create: now})
	m := h.manager(t)

	m.checkExpiry()
	evs := expiryEvents(t, h.store, "soon")
	if len(evs) != 1 || !strings.Contains(evs[0].Detail, soon.UTC().Format(time.RFC3339)) || evs[0].Principal != "credbroker" {
		t.Fatalf("events for the account expiring in 5 days: %+v", evs)
	}
	for _, id := range []string{"later", "never", "rotated"} {
		if evs := expiryEvents(t, h.store, id); len(evs) != 0 {
			t.Fatalf("account %q was warned about: %+v", id, evs)
		}
	}
	line := `"msg":"the account's secrets expire soon: add a new secret (AddAccountSecret)","account":"soon","expire_time":"` + soon.UTC().Format(time.RFC3339) + `","days_left":5`
	if !strings.Contains(logs.String(), line) {
		t.Fatalf("no structured log line %s in:\n%s", line, logs.String())
	}

	// Once a day, also across a restart.
	h.clock.Advance(23 * time.Hour)
	m.checkExpiry()
	h.manager(t).checkExpiry()
	if n := len(expiryEvents(t, h.store, "soon")); n != 1 {
		t.Fatalf("%d warnings within a day, want 1", n)
	}
	h.clock.Advance(time.Hour)
	m = h.manager(t) // restarted
	m.checkExpiry()
	if n := len(expiryEvents(t, h.store, "soon")); n != 2 {
		t.Fatalf("%d warnings after a day, want 2", n)
	}

	// The 8-day account enters the window a day later.
	if exp := m.Expiry(mustAccount(t, h.store, "later").Secrets, nil); !exp.Soon {
		t.Fatalf("account expiring in 7 days: %+v", exp)
	}
	m.checkExpiry()
	if n := len(expiryEvents(t, h.store, "later")); n != 1 {
		t.Fatalf("%d warnings for the account that entered the window, want 1", n)
	}

	// A secret added before expiry ends the warnings.
	a := mustAccount(t, h.store, "soon")
	a.Secrets = append(a.Secrets, store.Secret{ID: "fresh", CreateTime: h.clock.Now(), ExpireTime: h.clock.Now().Add(90 * 24 * time.Hour)})
	m.SecretsChanged(a)
	h.clock.Advance(25 * time.Hour)
	m.checkExpiry()
	if n := len(expiryEvents(t, h.store, "soon")); n != 2 {
		t.Fatalf("%d warnings after a new secret was added, want still 2", n)
	}
}

func TestExpiryWindowIsConfigurable(t *testing.T) {
	h := newHarness(t, nil)
	h.cfg.ExpiryWarning = 30 * 24 * time.Hour
	expire := h.clock.Now().Add(20 * 24 * time.Hour)
	h.addAccountWith(t, "acme", provider.KindJumpCloudServiceAccount, testSecret{value: clientSecret, expireTime: expire})
	m := h.manager(t)
	if exp := m.Expiry(mustAccount(t, h.store, "acme").Secrets, nil); !exp.Soon || !exp.Time.Equal(expire) {
		t.Fatalf("expiry in 20 days with a 30-day window: %+v", exp)
	}
	m.checkExpiry()
	if n := len(expiryEvents(t, h.store, "acme")); n != 1 {
		t.Fatalf("%d warnings, want 1", n)
	}
}

func TestExpiryIgnoresRejectedSecrets(t *testing.T) {
	h := newHarness(t, nil)
	m := New(h.cfg, h.store, h.keys, h.prov)
	expire := h.clock.Now().Add(24 * time.Hour)
	secrets := []store.Secret{{ID: "new"}, {ID: "old", ExpireTime: expire}}
	if exp := m.Expiry(secrets, nil); exp.Soon || !exp.Time.IsZero() {
		t.Fatalf("with a secret that never expires: %+v", exp)
	}
	// The provider rejected the newer secret: the account lives on the old one.
	use := SecretUses{{ID: "new", Rejected: &Failure{Reason: ReasonCredentialsRejected}}}
	if exp := m.Expiry(secrets, use); !exp.Soon || !exp.Time.Equal(expire) {
		t.Fatalf("with the newer secret rejected: %+v", exp)
	}
}

func TestExpiredSecretIsNotUsed(t *testing.T) {
	h := newHarness(t, nil)
	now := h.clock.Now()
	h.fake.SetClient("sa", "short")
	h.addAccountWith(t, "acme", provider.KindJumpCloudServiceAccount,
		testSecret{value: "long", create: now.Add(-time.Hour)},
		testSecret{value: "short", create: now, expireTime: now.Add(90 * time.Minute)})
	h.addAccountWith(t, "lone", provider.KindJumpCloudServiceAccount, testSecret{value: "short", expireTime: now.Add(90 * time.Minute)})
	m := h.manager(t)
	ctx := context.Background()
	if _, err := m.Get(ctx, "acme", 0); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.Status("acme"); st.SecretUse.Of("short").LastUsed.IsZero() {
		t.Fatalf("the newest secret was not used: %+v", st.SecretUse)
	}

	// The fake would still accept "short", as JumpCloud would not: the
	// broker must not even try it.
	h.fake.AddClientSecret("sa", "long")
	h.clock.Advance(2 * time.Hour) // past the secret's expiry and the token's
	before := h.fake.Requests()
	if _, err := m.Get(ctx, "acme", 0); err != nil {
		t.Fatal(err)
	}
	st, _ := m.Status("acme")
	if h.fake.Requests() != before+1 || st.SecretUse.Of("long").LastUsed.IsZero() || st.SecretUse.Of("short").LastUsed.After(now) {
		t.Fatalf("after expiry: %d requests, use %+v", h.fake.Requests()-before, st.SecretUse)
	}

	before = h.fake.Requests()
	if _, err := m.Get(ctx, "lone", 0); !errors.Is(err, ErrSecretsExpired) {
		t.Fatalf("err = %v, want ErrSecretsExpired", err)
	}
	st, _ = m.Status("lone")
	if h.fake.Requests() != before || st.State != StateNeedsAttention || st.LastError.Reason != ReasonSecretExpired {
		t.Fatalf("account whose only secret expired: %d requests, status %+v", h.fake.Requests()-before, st)
	}

	// The admin adds a new secret: it is used at once, not after the
	// recheck delay.
	a, err := h.store.UpdateAccount("lone", func(a *store.Account) error {
		key, err := h.master.UnwrapDataKey(a.ID, a.WrappedKey)
		if err != nil {
			return err
		}
		sealed, err := key.Seal(keyring.FieldClientSecret, []byte("long"))
		a.Secrets = append(a.Secrets, store.Secret{ID: "long", Sealed: sealed, CreateTime: h.clock.Now()})
		return err
	}, store.AuditEvent{})
	if err != nil {
		t.Fatal(err)
	}
	m.SecretsChanged(a)
	if _, err := m.Get(ctx, "lone", 0); err != nil {
		t.Fatalf("after a new secret was added: %v", err)
	}
}

func TestExpiredAPIKeyIsNotUsed(t *testing.T) {
	h := newHarness(t, nil)
	now := h.clock.Now()
	h.addAccountWith(t, "keys", provider.KindJumpCloudAPIKey,
		testSecret{value: "old-key", create: now.Add(-time.Hour)},
		testSecret{value: "new-key", create: now, expireTime: now.Add(time.Hour)})
	h.addAccountWith(t, "lone", provider.KindJumpCloudAPIKey, testSecret{value: "only-key", expireTime: now.Add(time.Hour)})
	m := h.manager(t)
	ctx := context.Background()
	credential := func(id string) string {
		t.Helper()
		is, err := m.Credential(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return is.AccessToken.Reveal()
	}
	if got := credential("keys"); got != "new-key" {
		t.Fatalf("key in use = %q, want the newest", got)
	}
	h.clock.Advance(time.Hour)
	if got := credential("keys"); got != "old-key" {
		t.Fatalf("key in use after the newest expired = %q", got)
	}

	// Nobody calls: the background check notices the last key expired.
	m.checkExpiry()
	st, _ := m.Status("lone")
	if st.State != StateNeedsAttention || st.LastError == nil || st.LastError.Reason != ReasonSecretExpired {
		t.Fatalf("status of the account whose only key expired: %+v", st)
	}
	if _, err := m.Credential(ctx, "lone"); !errors.Is(err, ErrSecretsExpired) {
		t.Fatalf("err = %v, want ErrSecretsExpired", err)
	}
	ts, err := h.store.TokenState("lone")
	if err != nil || State(ts.State) != StateNeedsAttention {
		t.Fatalf("stored state %+v, %v", ts, err)
	}
}

func mustAccount(t *testing.T, st *store.Store, id string) store.Account {
	t.Helper()
	a, err := st.Account(id)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// With more accounts than one check looks at, consecutive checks look at
// the next ones: every account is warned about once, none twice.
func TestExpiryChecksTakeTurns(t *testing.T) {
	h := newHarness(t, nil)
	h.cfg.Logger = slog.New(slog.NewJSONHandler(io.Discard, nil))
	soon := h.clock.Now().Add(5 * 24 * time.Hour)
	const n = expiryChecks + 300
	for i := range n {
		h.addAccountWith(t, fmt.Sprintf("acct-%d", i), provider.KindJumpCloudServiceAccount, testSecret{value: clientSecret, expireTime: soon})
	}
	m := h.manager(t)
	warned := func() int {
		c := 0
		if err := h.store.ScanAudit(store.AuditPos{}, func(_ store.AuditPos, ev store.AuditEvent) bool {
			if ev.Method == "secret_expiring" {
				c++
			}
			return true
		}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	m.checkExpiry()
	if c := warned(); c != expiryChecks {
		t.Fatalf("%d accounts warned about after one check, want %d", c, expiryChecks)
	}
	m.checkExpiry()
	m.checkExpiry()
	if c := warned(); c != n {
		t.Fatalf("%d warnings after three checks, want one for each of the %d accounts", c, n)
	}
}
