package callers_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/store"
)

// clock is a settable clock for the service's decisions.
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

// harness is a Service on a real store.
type harness struct {
	store *store.Store
	path  string
	mac   *keyring.MACKey
	clock *clock
	svc   *callers.Service
}

const admin = "spiffe://test/admin" // who makes the changes

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{clock: &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}}
	keyText, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	master, err := keyring.ParseMasterKey(keyText)
	if err != nil {
		t.Fatal(err)
	}
	h.path = filepath.Join(t.TempDir(), "db")
	if h.store, err = store.Open(h.path, time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.store.Close() })
	if _, err := h.store.Authenticate(keyring.NewMasters(master), false, store.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	if h.mac, _, err = master.NewMACKey(); err != nil {
		t.Fatal(err)
	}
	h.svc = h.service(t)
	return h
}

// service is a Service on the harness's store whose changes return once
// it has read them back, as the broker's copies do.
func (h *harness) service(t *testing.T) *callers.Service {
	var svc *callers.Service
	svc = callers.New(h.store, h.mac, h.clock.Now, func(context.Context) {
		if _, err := svc.Load(); err != nil {
			t.Errorf("synced: %v", err)
		}
	})
	svc.AdminPrincipalsProve(true) // a broker with client CAs
	if _, err := svc.Load(); err != nil {
		t.Fatal(err)
	}
	return svc
}

func event(method string) store.AuditEvent {
	return store.AuditEvent{Time: time.Now(), Principal: admin, Method: method, Code: "OK"}
}

// create makes a caller key, or fails the test.
func (h *harness) create(t *testing.T, id string, role callers.Role, expire time.Time) secret.String {
	t.Helper()
	_, key, err := h.svc.Create(context.Background(), callers.NewKey{ID: id, Description: "key " + id, Role: role, ExpireTime: expire, Creator: admin}, event("CreateCallerKey"))
	if err != nil {
		t.Fatalf("Create(%s): %v", id, err)
	}
	return key
}

// audit is the number of stored audit events.
func (h *harness) audit(t *testing.T) int {
	t.Helper()
	n := 0
	if err := h.store.ScanAudit(store.AuditPos{}, func(store.AuditPos, store.AuditEvent) bool { n++; return true }); err != nil {
		t.Fatal(err)
	}
	return n
}

func keyIDs(ks []callers.Key) []string {
	out := []string{}
	for _, k := range ks {
		out = append(out, k.ID)
	}
	return out
}

// tamper edits a stored record as someone without the master key could,
// straight through the storage engine.
func (h *harness) tamper(t *testing.T, key, old, new string) {
	t.Helper()
	ctx := context.Background()
	rec, err := h.store.Backend().Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	edited := bytes.Replace(rec.Value, []byte(old), []byte(new), 1)
	if bytes.Equal(edited, rec.Value) {
		t.Fatalf("%s does not hold %q", key, old)
	}
	if _, err := h.store.Backend().Txn(ctx, nil, []storage.Op{storage.Put(key, edited)}); err != nil {
		t.Fatal(err)
	}
}

// Bootstrap makes the first admin, a caller key or the principal given,
// once: any later call returns no key and writes nothing.
func TestBootstrap(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		principal string
		key       string                     // the operator's
		before    func(*testing.T, *harness) // makes the store's first start pass
		wantKey   bool
		wantKeys  []string
		wantAdmin []string
	}{
		{name: "admin key", wantKey: true, wantKeys: []string{callers.BootstrapKeyID}},
		{name: "admin key the operator made", key: "cbk_" + strings.Repeat("k", 43), wantKey: true, wantKeys: []string{callers.BootstrapKeyID}},
		{name: "admin principal", principal: "spiffe://ops/admin", wantKeys: []string{}, wantAdmin: []string{"spiffe://ops/admin"}},
		{
			name: "store with records", wantKeys: []string{"web"},
			before: func(t *testing.T, h *harness) { h.create(t, "web", callers.RoleCaller, time.Time{}) },
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			if tc.before != nil {
				tc.before(t, h)
			}
			events := h.audit(t)
			ev := event("Bootstrap")
			ev.Principal = "credbroker"
			key, err := h.svc.Bootstrap(tc.principal, secret.New(tc.key), ev)
			if err != nil {
				t.Fatal(err)
			}
			if tc.key != "" && key.Reveal() != tc.key {
				t.Fatalf("Bootstrap made another key than the operator's")
			}
			if _, err := h.svc.Load(); err != nil {
				t.Fatal(err)
			}
			if key.IsZero() == tc.wantKey {
				t.Fatalf("Bootstrap returned a key: %v, want %v", !key.IsZero(), tc.wantKey)
			}
			wantEvents := events
			if tc.before == nil {
				wantEvents++
			}
			if n := h.audit(t); n != wantEvents {
				t.Errorf("%d audit events, want %d", n, wantEvents)
			}
			if tc.wantKey {
				id, err := h.svc.AuthenticateKey(key.Reveal())
				if err != nil || id != (callers.Identity{Principal: callers.KeyPrincipalPrefix + callers.BootstrapKeyID, Admin: true}) {
					t.Errorf("AuthenticateKey(bootstrap key) = %+v, %v; want the admin %s", id, err, callers.BootstrapKeyID)
				}
			}
			for _, p := range tc.wantAdmin {
				if id := h.svc.CertificateIdentity(p); !id.Admin || id.Principal != p {
					t.Errorf("CertificateIdentity(%s) = %+v, want an admin", p, id)
				}
			}
			check := func(when string) {
				t.Helper()
				keys, _, err := h.svc.List("", 10)
				if err != nil || !slices.Equal(keyIDs(keys), tc.wantKeys) {
					t.Errorf("%s: keys %v, %v; want %v", when, keyIDs(keys), err, tc.wantKeys)
				}
				admins, err := h.svc.Admins()
				if err != nil || !slices.Equal(admins, tc.wantAdmin) {
					t.Errorf("%s: admin principals %v, %v; want %v", when, admins, err, tc.wantAdmin)
				}
				if n := h.audit(t); n != wantEvents {
					t.Errorf("%s: %d audit events, want %d", when, n, wantEvents)
				}
			}
			check("after Bootstrap")

			// Later starts, with either kind of first admin, and by another
			// service on the same store: nothing.
			for _, svc := range []*callers.Service{h.svc, callers.New(h.store, h.mac, h.clock.Now, func(context.Context) {})} {
				for _, p := range []string{"", "spiffe://ops/other"} {
					again, err := svc.Bootstrap(p, secret.String{}, ev)
					if err != nil || !again.IsZero() {
						t.Errorf("Bootstrap(%q) again: a key %v, %v; want none", p, !again.IsZero(), err)
					}
				}
			}
			if _, err := h.svc.Load(); err != nil {
				t.Fatal(err)
			}
			check("after more Bootstraps")
			if key.IsZero() {
				return
			}
			if _, err := h.svc.AuthenticateKey(key.Reveal()); err != nil {
				t.Errorf("the bootstrap key no longer works: %v", err)
			}
		})
	}
}

// Create makes a key that authenticates as its own principal, with its
// role; the returned record is what was asked for.
func TestCreateAndAuthenticate(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	expire := h.clock.Now().Add(24 * time.Hour)
	cases := []struct {
		in   callers.NewKey
		want callers.Identity
	}{
		{callers.NewKey{ID: "web", Description: "the web tier", Role: callers.RoleCaller, Creator: admin}, callers.Identity{Principal: "callerKeys/web"}},
		{callers.NewKey{ID: "ops", Role: callers.RoleAdmin, Creator: admin, ExpireTime: expire}, callers.Identity{Principal: "callerKeys/ops", Admin: true}},
		{callers.NewKey{ID: "batch", Role: callers.RoleCaller, ExpireTime: expire}, callers.Identity{Principal: "callerKeys/batch"}},
	}
	format := regexp.MustCompile(`^cbk_[A-Za-z0-9_-]{43}$`)
	issued := map[string]bool{}
	for _, tc := range cases {
		events := h.audit(t)
		k, key, err := h.svc.Create(context.Background(), tc.in, event("CreateCallerKey"))
		if err != nil {
			t.Fatalf("Create(%s): %v", tc.in.ID, err)
		}
		want := callers.Key{ID: tc.in.ID, Description: tc.in.Description, Role: tc.in.Role, CreateTime: h.clock.Now(), ExpireTime: tc.in.ExpireTime, Creator: tc.in.Creator}
		if !reflect.DeepEqual(k, want) {
			t.Errorf("Create = %+v, want %+v", k, want)
		}
		if !format.MatchString(key.Reveal()) || issued[key.Reveal()] {
			t.Errorf("Create(%s) made a key of the wrong form, or one issued before", tc.in.ID)
		}
		issued[key.Reveal()] = true
		if n := h.audit(t); n != events+1 {
			t.Errorf("Create(%s): %d new audit events, want 1", tc.in.ID, n-events)
		}
		if !h.svc.Exists(tc.in.ID) {
			t.Errorf("Exists(%s) = false after Create", tc.in.ID)
		}
		if id, err := h.svc.AuthenticateKey(key.Reveal()); err != nil || id != tc.want {
			t.Errorf("AuthenticateKey(%s's key) = %+v, %v; want %+v", tc.in.ID, id, err, tc.want)
		}
	}
	if h.svc.Exists("nope") {
		t.Error("Exists(nope) = true")
	}
	// An id in use (by a key, revoked or not) is not given to another.
	events := h.audit(t)
	for _, role := range []callers.Role{callers.RoleCaller, callers.RoleAdmin} {
		_, key, err := h.svc.Create(context.Background(), callers.NewKey{ID: "web", Role: role}, event("CreateCallerKey"))
		if !errors.Is(err, callers.ErrExists) || !key.IsZero() {
			t.Errorf("second Create(web, %s): %v, a key %v; want ErrExists and none", role, err, !key.IsZero())
		}
	}
	if n := h.audit(t); n != events {
		t.Errorf("refused Creates recorded %d audit events", n-events)
	}
}

// Keys that are not of the broker's form, or that it never issued, are
// refused, with no identity.
func TestAuthenticateKeyRefusals(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	key := h.create(t, "web", callers.RoleAdmin, time.Time{}).Reveal()
	other := newHarness(t)
	otherKey := other.create(t, "web", callers.RoleAdmin, time.Time{}).Reveal()
	if _, err := h.svc.AuthenticateKey(key); err != nil {
		t.Fatalf("the issued key is refused: %v", err)
	}
	cases := []struct {
		name, key string
		want      error
	}{
		{"empty", "", callers.ErrKeyMalformed},
		{"with its scheme", "Bearer " + key, callers.ErrKeyMalformed},
		{"upper-case prefix", "CBK_" + key[4:], callers.ErrKeyMalformed},
		{"without prefix", key[4:], callers.ErrKeyMalformed},
		{"leading space", " " + key, callers.ErrKeyMalformed},
		{"prefix only", "cbk_", callers.ErrUnknownKey},
		{"never issued", "cbk_" + strings.Repeat("A", 43), callers.ErrUnknownKey},
		{"one character changed", flipLast(key), callers.ErrUnknownKey},
		{"truncated", key[:len(key)-1], callers.ErrUnknownKey},
		{"trailing space", key + " ", callers.ErrUnknownKey},
		{"another broker's key", otherKey, callers.ErrUnknownKey},
	}
	for _, tc := range cases {
		id, err := h.svc.AuthenticateKey(tc.key)
		if !errors.Is(err, tc.want) || id != (callers.Identity{}) {
			t.Errorf("%s: AuthenticateKey = %+v, %v; want no identity, %v", tc.name, id, err, tc.want)
		}
	}
}

// flipLast changes the last character of a key to another of its alphabet.
func flipLast(key string) string {
	if strings.HasSuffix(key, "A") {
		return key[:len(key)-1] + "B"
	}
	return key[:len(key)-1] + "A"
}

// A revoked key is refused with ErrKeyRevoked on the next call, naming the
// key; revoking it again changes and records nothing.
func TestRevoke(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	if _, err := h.svc.AddAdmin(context.Background(), "spiffe://ops/admin", admin, event("AddAdmin")); err != nil {
		t.Fatal(err)
	}
	keys := map[string]secret.String{
		"web": h.create(t, "web", callers.RoleCaller, time.Time{}),
		"ops": h.create(t, "ops", callers.RoleAdmin, time.Time{}),
		"api": h.create(t, "api", callers.RoleCaller, time.Time{}),
	}
	revoked := map[string]bool{}
	steps := []struct {
		id          string
		wantErr     error
		wantChanged bool
	}{
		{"web", nil, true},
		{"web", nil, false},
		{"ops", nil, true},
		{"nope", callers.ErrNotFound, false},
		{"ops", nil, false},
	}
	for _, step := range steps {
		h.clock.Advance(time.Minute)
		events := h.audit(t)
		k, changed, err := h.svc.Revoke(context.Background(), step.id, event("RevokeCallerKey"))
		if !errors.Is(err, step.wantErr) || changed != step.wantChanged {
			t.Fatalf("Revoke(%s) = changed %v, %v; want %v, %v", step.id, changed, err, step.wantChanged, step.wantErr)
		}
		wantEvents := events
		if changed {
			wantEvents++
			revoked[step.id] = true
			if !k.RevokeTime.Equal(h.clock.Now()) {
				t.Errorf("Revoke(%s): revoked at %v, want %v", step.id, k.RevokeTime, h.clock.Now())
			}
		} else if step.wantErr == nil && (k.ID != step.id || k.RevokeTime.IsZero() || k.RevokeTime.Equal(h.clock.Now())) {
			t.Errorf("Revoke(%s) again = %+v, want it unchanged", step.id, k)
		}
		if n := h.audit(t); n != wantEvents {
			t.Errorf("Revoke(%s): %d new audit events, want %d", step.id, n-events, wantEvents-events)
		}
		for id, key := range keys {
			got, err := h.svc.AuthenticateKey(key.Reveal())
			switch {
			case revoked[id] && (!errors.Is(err, callers.ErrKeyRevoked) || got != callers.Identity{Principal: "callerKeys/" + id}):
				t.Errorf("after Revoke(%s): AuthenticateKey(%s) = %+v, %v; want it named, not admin, and ErrKeyRevoked", step.id, id, got, err)
			case !revoked[id] && (err != nil || got.Principal != "callerKeys/"+id):
				t.Errorf("after Revoke(%s): AuthenticateKey(%s) = %+v, %v; want it accepted", step.id, id, got, err)
			}
		}
	}
	if _, _, err := h.svc.Create(context.Background(), callers.NewKey{ID: "web", Role: callers.RoleCaller}, event("CreateCallerKey")); !errors.Is(err, callers.ErrExists) {
		t.Errorf("Create with a revoked key's id: %v, want ErrExists", err)
	}
}

// The last usable admin identity, key or principal, can be neither
// revoked nor removed; expired and revoked admin keys, and caller keys,
// do not count.
func TestLastAdmin(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	if _, err := h.svc.Bootstrap("", secret.String{}, event("Bootstrap")); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Load(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const principal = "spiffe://ops/admin"
	steps := []struct {
		name  string
		setup func()
		do    func() error
		want  error
	}{
		{name: "revoke the only admin", do: func() error { return revoke(h, callers.BootstrapKeyID) }, want: callers.ErrLastAdmin},
		{
			name:  "a caller key is no admin",
			setup: func() { h.create(t, "web", callers.RoleCaller, time.Time{}) },
			do:    func() error { return revoke(h, callers.BootstrapKeyID) }, want: callers.ErrLastAdmin,
		},
		{
			name: "an expired admin key is none",
			setup: func() {
				h.create(t, "old", callers.RoleAdmin, h.clock.Now().Add(time.Hour))
				h.clock.Advance(time.Hour)
			},
			do: func() error { return revoke(h, callers.BootstrapKeyID) }, want: callers.ErrLastAdmin,
		},
		{name: "an expired admin key can be revoked", do: func() error { return revoke(h, "old") }},
		{
			name:  "a second admin key",
			setup: func() { h.create(t, "ops", callers.RoleAdmin, time.Time{}) },
			do:    func() error { return revoke(h, callers.BootstrapKeyID) },
		},
		{name: "revoke the second", do: func() error { return revoke(h, "ops") }, want: callers.ErrLastAdmin},
		{
			name: "an admin principal",
			setup: func() {
				if _, err := h.svc.AddAdmin(ctx, principal, admin, event("AddAdmin")); err != nil {
					t.Fatal(err)
				}
			},
			do: func() error { return revoke(h, "ops") },
		},
		{name: "a revoked admin key is none", do: func() error { return h.svc.RemoveAdmin(ctx, principal, event("RemoveAdmin")) }, want: callers.ErrLastAdmin},
		{
			name:  "a new admin key",
			setup: func() { h.create(t, "ops2", callers.RoleAdmin, time.Time{}) },
			do:    func() error { return h.svc.RemoveAdmin(ctx, principal, event("RemoveAdmin")) },
		},
		{name: "and it is the last", do: func() error { return revoke(h, "ops2") }, want: callers.ErrLastAdmin},
	}
	for _, step := range steps {
		if step.setup != nil {
			step.setup()
		}
		events := h.audit(t)
		err := step.do()
		if !errors.Is(err, step.want) {
			t.Fatalf("%s: %v, want %v", step.name, err, step.want)
		}
		if n, want := h.audit(t)-events, map[bool]int{true: 0, false: 1}[err != nil]; n != want {
			t.Errorf("%s: %d new audit events, want %d", step.name, n, want)
		}
	}
	keys, _, err := h.svc.List("", 10)
	if err != nil {
		t.Fatal(err)
	}
	var usable []string
	for _, k := range keys {
		if k.Role == callers.RoleAdmin && k.RevokeTime.IsZero() && !k.Expired(h.clock.Now()) {
			usable = append(usable, k.ID)
		}
	}
	if admins, err := h.svc.Admins(); err != nil || len(admins) != 0 || !slices.Equal(usable, []string{"ops2"}) {
		t.Errorf("admin principals %v (%v), usable admin keys %v; want none and [ops2]", admins, err, usable)
	}
}

func revoke(h *harness, id string) error {
	_, _, err := h.svc.Revoke(context.Background(), id, event("RevokeCallerKey"))
	return err
}

// However many admins try to revoke each other's keys at once, one
// admin key is left.
func TestConcurrentRevokesLeaveAnAdmin(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	const n = 8
	keys := make([]secret.String, n)
	for i := range n {
		keys[i] = h.create(t, fmt.Sprintf("ops%d", i), callers.RoleAdmin, time.Time{})
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = revoke(h, fmt.Sprintf("ops%d", i)) })
	}
	wg.Wait()
	refused, working := 0, 0
	for i, err := range errs {
		switch {
		case errors.Is(err, callers.ErrLastAdmin):
			refused++
		case err != nil:
			t.Errorf("Revoke(ops%d): %v", i, err)
		}
		if _, err := h.svc.AuthenticateKey(keys[i].Reveal()); err == nil {
			working++
		}
	}
	if refused != 1 || working != 1 {
		t.Errorf("%d revocations refused, %d admin keys still work; want 1 and 1", refused, working)
	}
}

// A key is refused with ErrKeyExpired from its expire time on, naming it.
func TestExpiredKey(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	expire := h.clock.Now().Add(time.Hour)
	key := h.create(t, "batch", callers.RoleAdmin, expire)
	never := h.create(t, "web", callers.RoleCaller, time.Time{})
	steps := []struct {
		advance time.Duration
		want    error
	}{
		{0, nil},
		{time.Hour - time.Nanosecond, nil},
		{time.Nanosecond, callers.ErrKeyExpired}, // at its expire time
		{24 * time.Hour, callers.ErrKeyExpired},
	}
	for _, step := range steps {
		h.clock.Advance(step.advance)
		id, err := h.svc.AuthenticateKey(key.Reveal())
		want := callers.Identity{Principal: "callerKeys/batch", Admin: step.want == nil}
		if !errors.Is(err, step.want) || id != want {
			t.Errorf("at %v: AuthenticateKey = %+v, %v; want %+v, %v", h.clock.Now(), id, err, want, step.want)
		}
		if _, err := h.svc.AuthenticateKey(never.Reveal()); err != nil {
			t.Errorf("at %v: a key that never expires: %v", h.clock.Now(), err)
		}
	}
}

// Key.Expired: from its expire time on; never with none.
func TestKeyExpired(t *testing.T) {
	t.Parallel()
	at := time.Date(2030, 6, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		expire, now time.Time
		want        bool
	}{
		{time.Time{}, at, false},
		{at, at.Add(-time.Nanosecond), false},
		{at, at, true},
		{at, at.Add(time.Hour), true},
	}
	for _, tc := range cases {
		if got := (callers.Key{ExpireTime: tc.expire}).Expired(tc.now); got != tc.want {
			t.Errorf("expiring %v, at %v: Expired = %v, want %v", tc.expire, tc.now, got, tc.want)
		}
	}
}

// AddAdmin and RemoveAdmin give and take the admin role of certificate
// principals; Admins lists them sorted.
func TestAdminPrincipals(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	const a, b, c = "spiffe://ops/a", "spiffe://ops/b", "spiffe://ops/c"
	steps := []struct {
		name        string
		remove      bool
		principal   string
		wantChanged bool
		wantErr     error
		want        []string
	}{
		{name: "add", principal: b, wantChanged: true, want: []string{b}},
		{name: "add again", principal: b, want: []string{b}},
		{name: "add another", principal: a, wantChanged: true, want: []string{a, b}},
		{name: "remove one never added", remove: true, principal: c, wantErr: callers.ErrNotAdmin, want: []string{a, b}},
		{name: "remove", remove: true, principal: b, wantChanged: true, want: []string{a}},
		{name: "remove again", remove: true, principal: b, wantErr: callers.ErrNotAdmin, want: []string{a}},
		{name: "remove the last", remove: true, principal: a, wantErr: callers.ErrLastAdmin, want: []string{a}},
		{name: "add back", principal: b, wantChanged: true, want: []string{a, b}},
	}
	for _, step := range steps {
		events := h.audit(t)
		var changed bool
		var err error
		if step.remove {
			err = h.svc.RemoveAdmin(ctx, step.principal, event("RemoveAdmin"))
			changed = err == nil
		} else {
			changed, err = h.svc.AddAdmin(ctx, step.principal, admin, event("AddAdmin"))
		}
		if !errors.Is(err, step.wantErr) || changed != step.wantChanged {
			t.Fatalf("%s: changed %v, %v; want %v, %v", step.name, changed, err, step.wantChanged, step.wantErr)
		}
		want := events
		if changed {
			want++
		}
		if n := h.audit(t); n != want {
			t.Errorf("%s: %d new audit events, want %d", step.name, n-events, want-events)
		}
		got, err := h.svc.Admins()
		if err != nil || !slices.Equal(got, step.want) {
			t.Errorf("%s: Admins = %v, %v; want %v", step.name, got, err, step.want)
		}
		for _, p := range []string{a, b, c} {
			want := callers.Identity{Principal: p, Admin: slices.Contains(step.want, p)}
			if id := h.svc.CertificateIdentity(p); id != want {
				t.Errorf("%s: CertificateIdentity(%s) = %+v, want %+v", step.name, p, id, want)
			}
		}
	}
	stored, err := h.store.Admins("", 10)
	if err != nil || len(stored) != 2 || stored[0].Creator != admin || !stored[0].CreateTime.Equal(h.clock.Now()) {
		t.Errorf("stored admin principals %+v, %v; want two made by %s", stored, err, admin)
	}
}

// List pages through the keys in id order, revoked ones too.
func TestList(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for _, id := range []string{"k3", "k1", "k5", "k2", "k4"} {
		h.create(t, id, callers.RoleCaller, time.Time{})
	}
	if err := revoke(h, "k2"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		after    string
		limit    int
		want     []string
		wantMore bool
	}{
		{"", 2, []string{"k1", "k2"}, true},
		{"k2", 2, []string{"k3", "k4"}, true},
		{"k4", 2, []string{"k5"}, false},
		{"k3", 2, []string{"k4", "k5"}, false},
		{"", 5, []string{"k1", "k2", "k3", "k4", "k5"}, false},
		{"", 4, []string{"k1", "k2", "k3", "k4"}, true},
		{"", 100, []string{"k1", "k2", "k3", "k4", "k5"}, false},
		{"k5", 2, []string{}, false},
		{"k", 1, []string{"k1"}, true},
	}
	for _, tc := range cases {
		got, more, err := h.svc.List(tc.after, tc.limit)
		if err != nil || !slices.Equal(keyIDs(got), tc.want) || more != tc.wantMore {
			t.Errorf("List(%q, %d) = %v, more %v, %v; want %v, more %v", tc.after, tc.limit, keyIDs(got), more, err, tc.want, tc.wantMore)
		}
	}
	got, _, err := h.svc.List("k1", 1)
	if err != nil || len(got) != 1 || got[0].RevokeTime.IsZero() || got[0].Description != "key k2" || got[0].Role != callers.RoleCaller {
		t.Errorf("List shows %+v, %v; want k2, revoked, with its description", got, err)
	}
}

// Only a keyed hash of a caller key is stored: the key is in no record,
// nowhere in the database file, and not in what admins see.
func TestKeyIsNeverStored(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	boot, err := h.svc.Bootstrap("", secret.String{}, event("Bootstrap"))
	if err != nil || boot.IsZero() {
		t.Fatalf("Bootstrap: a key %v, %v", !boot.IsZero(), err)
	}
	if _, err := h.svc.Load(); err != nil {
		t.Fatal(err)
	}
	keys := []secret.String{boot}
	var shown []callers.Key
	for _, role := range []callers.Role{callers.RoleAdmin, callers.RoleCaller} {
		k, key, err := h.svc.Create(context.Background(), callers.NewKey{ID: "stored-" + string(role), Role: role, Creator: admin}, event("CreateCallerKey"))
		if err != nil {
			t.Fatal(err)
		}
		keys, shown = append(keys, key), append(shown, k)
	}
	if err := revoke(h, "stored-caller"); err != nil {
		t.Fatal(err)
	}
	listed, _, err := h.svc.List("", 10)
	if err != nil {
		t.Fatal(err)
	}
	shown = append(shown, listed...)

	var forbidden [][]byte
	for _, key := range keys {
		raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(key.Reveal(), "cbk_"))
		if err != nil || len(raw) != 32 {
			t.Fatalf("a key of %d random bytes: %v", len(raw), err)
		}
		forbidden = append(forbidden, []byte(key.Reveal()), []byte(key.Reveal()[4:]), raw, []byte(base64.StdEncoding.EncodeToString(raw)))
	}
	records, err := h.store.CallerKeys("", 10)
	if err != nil || len(records) != 3 {
		t.Fatalf("stored keys: %d, %v", len(records), err)
	}
	var hashes [][]byte
	for _, r := range records {
		// A keyed hash: HMAC-SHA256, not the key's own SHA-256.
		if len(r.Hash) != sha256.Size {
			t.Fatalf("key %s is stored with a hash of %d bytes", r.ID, len(r.Hash))
		}
		for i, key := range keys {
			if sum := sha256.Sum256([]byte(key.Reveal())); bytes.Equal(r.Hash, sum[:]) {
				t.Errorf("key %s is stored as key %d's plain SHA-256", r.ID, i)
			}
		}
		for i, f := range forbidden {
			if bytes.Contains(r.Hash, f) {
				t.Errorf("key %s's stored hash holds key %d", r.ID, i/4)
			}
		}
		hashes = append(hashes, r.Hash, []byte(base64.StdEncoding.EncodeToString(r.Hash)), []byte(fmt.Sprint(r.Hash)))
	}

	file, err := os.ReadFile(h.path)
	if err != nil {
		t.Fatal(err)
	}
	// The file is the one written: it holds the records, in clear.
	if len(file) == 0 || !bytes.Contains(file, []byte(`"stored-admin"`)) || !bytes.Contains(file, []byte(callers.BootstrapKeyID)) {
		t.Fatalf("the database file (%d bytes) does not hold the keys' records", len(file))
	}
	for i, f := range forbidden {
		if bytes.Contains(file, f) {
			t.Errorf("the database file holds key %d (form %d)", i/4, i%4)
		}
	}
	for _, r := range records {
		printed := fmt.Sprintf("%+v", r)
		for i, f := range forbidden {
			if strings.Contains(printed, string(f)) {
				t.Errorf("stored record %s holds key %d", r.ID, i/4)
			}
		}
	}
	for _, k := range shown {
		printed := fmt.Sprintf("%+v", k)
		if !strings.Contains(printed, k.ID) {
			t.Fatalf("a key printed without its ID: %s", printed)
		}
		for _, f := range append(forbidden, hashes...) {
			if strings.Contains(printed, string(f)) {
				t.Errorf("what admins see of %s shows its key or hash: %s", k.ID, printed)
			}
		}
	}
	if typ := reflect.TypeOf(callers.Key{}); hasBytes(typ) {
		t.Errorf("%s has a field of bytes, where a hash could go", typ)
	}
}

func hasBytes(t reflect.Type) bool {
	for i := range t.NumField() {
		if f := t.Field(i).Type; f.Kind() == reflect.Slice && f.Elem().Kind() == reflect.Uint8 {
			return true
		}
	}
	return false
}

// A service knows what the store holds once it has read it (Load) or been
// told of each change (KeyStored, AdminStored, AdminDeleted), as another
// service's copies are.
func TestCopiesFollowTheStore(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	other := callers.New(h.store, h.mac, h.clock.Now, func(context.Context) {})
	const p = "spiffe://ops/admin"
	key := h.create(t, "web", callers.RoleCaller, time.Time{})
	if _, err := h.svc.AddAdmin(context.Background(), p, admin, event("AddAdmin")); err != nil {
		t.Fatal(err)
	}
	if _, err := other.AuthenticateKey(key.Reveal()); !errors.Is(err, callers.ErrUnknownKey) {
		t.Fatalf("a key made elsewhere and not yet read: %v, want ErrUnknownKey", err)
	}
	if other.CertificateIdentity(p).Admin || other.Exists("web") {
		t.Fatal("a service that has read nothing knows the admin or the key")
	}

	records, err := h.store.CallerKeys("", 10)
	if err != nil || len(records) != 1 {
		t.Fatalf("stored keys: %d, %v", len(records), err)
	}
	other.KeyStored(records[0])
	other.AdminStored(store.AdminPrincipal{Principal: p})
	if id, err := other.AuthenticateKey(key.Reveal()); err != nil || id.Principal != "callerKeys/web" || !other.CertificateIdentity(p).Admin {
		t.Errorf("after KeyStored and AdminStored: %+v, %v, admin %v", id, err, other.CertificateIdentity(p).Admin)
	}

	// The key replaced by another record (another hash): the old key is
	// unknown at once.
	replaced := records[0]
	replaced.Hash = []byte("another hash")
	other.KeyStored(replaced)
	if _, err := other.AuthenticateKey(key.Reveal()); !errors.Is(err, callers.ErrUnknownKey) {
		t.Errorf("a key whose record was replaced: %v, want ErrUnknownKey", err)
	}
	other.AdminDeleted(p)
	if other.CertificateIdentity(p).Admin {
		t.Error("an admin principal still admin after AdminDeleted")
	}

	// Load reads everything afresh, in place of what was held.
	if err := revoke(h, "web"); err != nil {
		t.Fatal(err)
	}
	if tampered, err := other.Load(); err != nil || len(tampered) != 0 {
		t.Fatalf("Load: %v, %v", tampered, err)
	}
	if _, err := other.AuthenticateKey(key.Reveal()); !errors.Is(err, callers.ErrKeyRevoked) || !other.CertificateIdentity(p).Admin {
		t.Errorf("after Load: %v (want ErrKeyRevoked), admin %v", err, other.CertificateIdentity(p).Admin)
	}
}

// A stored key or admin principal that fails its integrity check is named
// by Load and grants nothing; revoking such a key stores a clean, revoked
// record in its place.
func TestTamperedRecords(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	const p, q = "spiffe://ops/admin", "spiffe://ops/other"
	web := h.create(t, "web", callers.RoleCaller, time.Time{})
	ops := h.create(t, "ops", callers.RoleAdmin, time.Time{})
	for _, principal := range []string{p, q} {
		if _, err := h.svc.AddAdmin(ctx, principal, admin, event("AddAdmin")); err != nil {
			t.Fatal(err)
		}
	}
	// Someone makes the caller key an admin one, and the admin principal
	// another's, in the file.
	h.tamper(t, "caller_keys/web", `"role":"caller"`, `"role":"admin"`)
	h.tamper(t, "admin_principals/"+p, admin, "spiffe://test/someone")

	tampered, err := h.svc.Load()
	if err != nil || !slices.Equal(tampered, []string{"callerKeys/web", "adminPrincipals/" + p}) {
		t.Fatalf("Load = %v, %v; want the key and the principal named", tampered, err)
	}
	if id, err := h.svc.AuthenticateKey(web.Reveal()); !errors.Is(err, callers.ErrUnknownKey) || id.Admin {
		t.Errorf("the tampered key: %+v, %v; want ErrUnknownKey", id, err)
	}
	if h.svc.CertificateIdentity(p).Admin || !h.svc.CertificateIdentity(q).Admin {
		t.Error("the tampered principal is an admin, or the other is not")
	}
	if admins, err := h.svc.Admins(); err != nil || !slices.Equal(admins, []string{q}) {
		t.Errorf("Admins = %v, %v; want [%s]", admins, err, q)
	}
	keys, _, err := h.svc.List("", 10)
	if err != nil || len(keys) != 2 || !reflect.DeepEqual(keys[1], callers.Key{ID: "web", Tampered: true}) {
		t.Errorf("List = %+v, %v; want web with only its ID, tampered", keys, err)
	}
	if _, err := h.svc.AuthenticateKey(ops.Reveal()); err != nil {
		t.Errorf("an untouched key: %v", err)
	}

	// A tampered principal is no admin identity: the other is the last
	// but for the admin key.
	if err := revoke(h, "ops"); err != nil {
		t.Fatal(err)
	}
	if err := h.svc.RemoveAdmin(ctx, q, event("RemoveAdmin")); !errors.Is(err, callers.ErrLastAdmin) {
		t.Errorf("RemoveAdmin of the last untampered principal: %v, want ErrLastAdmin", err)
	}
	if err := h.svc.RemoveAdmin(ctx, p, event("RemoveAdmin")); err != nil {
		t.Errorf("RemoveAdmin of the tampered principal: %v", err)
	}

	h.clock.Advance(time.Minute)
	k, changed, err := h.svc.Revoke(ctx, "web", event("RevokeCallerKey"))
	if err != nil || !changed {
		t.Fatalf("Revoke(web): changed %v, %v", changed, err)
	}
	if k.Tampered || k.Role != callers.RoleCaller || !k.RevokeTime.Equal(h.clock.Now()) || k.Creator != admin {
		t.Errorf("Revoke(web) = %+v, want a clean caller record, revoked now by %s", k, admin)
	}
	if tampered, err := h.svc.Load(); err != nil || len(tampered) != 0 {
		t.Errorf("Load after the repair: %v, %v; want nothing tampered", tampered, err)
	}
	if _, err := h.svc.AuthenticateKey(web.Reveal()); !errors.Is(err, callers.ErrUnknownKey) {
		t.Errorf("the tampered key after its revocation: %v, want ErrUnknownKey", err)
	}
}

// NewID makes distinct ids of one shape.
func TestNewID(t *testing.T) {
	t.Parallel()
	format := regexp.MustCompile(`^ck-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for range 100 {
		id := callers.NewID()
		if !format.MatchString(id) || seen[id] {
			t.Fatalf("NewID() = %q (seen before: %v)", id, seen[id])
		}
		seen[id] = true
	}
}

// Without client CAs, an admin principal is no admin anyone can act as:
// it does not let the last admin key go. When no usable admin is left
// (here: the last admin key expired), Recover makes the operator's key an
// admin key, once, and refuses a key that was a caller key before.
func TestRecoverAnAdmin(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.svc.AdminPrincipalsProve(false)
	boot, err := h.svc.Bootstrap("", secret.String{}, event("Bootstrap"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.AddAdmin(context.Background(), "spiffe://ops/admin", admin, event("AddAdmin")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.svc.Revoke(context.Background(), callers.BootstrapKeyID, event("Revoke")); !errors.Is(err, callers.ErrLastAdmin) {
		t.Fatalf("revoking the last admin key beside a principal no certificate can prove: %v", err)
	}
	operators := "cbk_" + strings.Repeat("r", 43)
	if id, left, err := h.svc.Recover(secret.New(operators), event("recover_admin")); id != "" || !left || err != nil {
		t.Fatalf("Recover with an admin left: %q, %v, %v", id, left, err)
	}

	h.create(t, "short", callers.RoleAdmin, h.clock.Now().Add(time.Hour))
	if _, _, err := h.svc.Revoke(context.Background(), callers.BootstrapKeyID, event("Revoke")); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(2 * time.Hour) // the last admin key expires
	if id, left, err := h.svc.Recover(secret.String{}, event("recover_admin")); id != "" || left || err != nil {
		t.Fatalf("Recover with no key given: %q, %v, %v", id, left, err)
	}
	if _, _, err := h.svc.Recover(secret.New(boot.Reveal()), event("recover_admin")); !errors.Is(err, callers.ErrKeyUsedBefore) {
		t.Fatalf("Recover with the revoked bootstrap key: %v", err)
	}
	id, _, err := h.svc.Recover(secret.New(operators), event("recover_admin"))
	if err != nil || !strings.HasPrefix(id, "recovered-admin-") {
		t.Fatalf("Recover: %q, %v", id, err)
	}
	if _, err := h.svc.Load(); err != nil {
		t.Fatal(err)
	}
	if who, err := h.svc.AuthenticateKey(operators); err != nil || !who.Admin || who.Principal != callers.KeyPrincipalPrefix+id {
		t.Fatalf("the recovered key: %+v, %v", who, err)
	}
	if again, left, err := h.svc.Recover(secret.New("cbk_"+strings.Repeat("s", 43)), event("recover_admin")); again != "" || !left || err != nil {
		t.Fatalf("Recover once recovered: %q, %v, %v", again, left, err)
	}

	// A key deleted is never taken again, nor made twice.
	if _, _, err := h.svc.Revoke(context.Background(), id, event("Revoke")); !errors.Is(err, callers.ErrLastAdmin) {
		t.Fatalf("revoking the recovered last admin: %v", err)
	}
	h.create(t, "later", callers.RoleAdmin, h.clock.Now().Add(time.Hour))
	if err := h.svc.Delete(context.Background(), id, event("Delete")); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(2 * time.Hour)
	if _, _, err := h.svc.Recover(secret.New(operators), event("recover_admin")); !errors.Is(err, callers.ErrKeyUsedBefore) {
		t.Fatalf("Recover with a deleted key: %v", err)
	}
	fresh := secret.New("cbk_" + strings.Repeat("f", 43))
	first, _, err := h.svc.Recover(fresh, event("recover_admin"))
	if err != nil || first == "" {
		t.Fatalf("Recover with a new key: %q, %v", first, err)
	}
	other := callers.New(h.store, h.mac, h.clock.Now, func(context.Context) {}) // another replica, a moment later
	h.clock.Advance(time.Second)
	if second, left, err := other.Recover(fresh, event("recover_admin")); second != "" || !left || err != nil {
		t.Fatalf("a second replica's Recover with the same key: %q, %v, %v", second, left, err)
	}
}
