package keyring

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func mustMaster(t *testing.T) *MasterKey {
	t.Helper()
	text, err := GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseMasterKey(text)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestRoundTrip(t *testing.T) {
	m := mustMaster(t)
	k, wrapped, err := m.NewDataKey("acme")
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := k.Seal("client_secret", []byte("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("s3cret")) {
		t.Fatal("sealed value contains the plaintext")
	}
	k2, err := m.UnwrapDataKey("acme", wrapped)
	if err != nil {
		t.Fatal(err)
	}
	got, err := k2.Open("client_secret", sealed)
	if err != nil || string(got) != "s3cret" {
		t.Fatalf("Open = %q, %v", got, err)
	}
}

// Ciphertexts are bound to account and field: moving one anywhere else must fail.
func TestMovedCiphertextFails(t *testing.T) {
	m := mustMaster(t)
	acme, acmeWrapped, _ := m.NewDataKey("acme")
	_, otherWrapped, _ := m.NewDataKey("other")
	sealed, _ := acme.Seal("client_secret", []byte("s3cret"))

	if _, err := acme.Open("access_token", sealed); !errors.Is(err, ErrDecrypt) {
		t.Errorf("open under another field: err = %v, want ErrDecrypt", err)
	}
	// Both the wrapped key and the secret copied into another account's record.
	if _, err := m.UnwrapDataKey("other", acmeWrapped); !errors.Is(err, ErrDecrypt) {
		t.Errorf("unwrap acme's key as other: err = %v, want ErrDecrypt", err)
	}
	other, err := m.UnwrapDataKey("other", otherWrapped)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Open("client_secret", sealed); !errors.Is(err, ErrDecrypt) {
		t.Errorf("open acme's secret with other's key: err = %v, want ErrDecrypt", err)
	}
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	if _, err := acme.Open("client_secret", tampered); !errors.Is(err, ErrDecrypt) {
		t.Errorf("tampered: err = %v, want ErrDecrypt", err)
	}
}

func TestKeyCheck(t *testing.T) {
	m, other := mustMaster(t), mustMaster(t)
	id, otherID := []byte("database-1"), []byte("database-2")
	check, err := m.KeyCheck(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.VerifyKeyCheck(check, id); err != nil {
		t.Errorf("same key: %v", err)
	}
	if err := other.VerifyKeyCheck(check, id); !errors.Is(err, ErrWrongMasterKey) {
		t.Errorf("other key: err = %v, want ErrWrongMasterKey", err)
	}
	// Bound to the database: neither another id nor the earlier version's
	// check (no id) accepts it.
	if err := m.VerifyKeyCheck(check, otherID); !errors.Is(err, ErrWrongMasterKey) {
		t.Errorf("other database: err = %v, want ErrWrongMasterKey", err)
	}
	if err := m.VerifyLegacyKeyCheck(check); !errors.Is(err, ErrWrongMasterKey) {
		t.Errorf("as an earlier version's check: err = %v, want ErrWrongMasterKey", err)
	}
	if _, err := other.UnwrapDataKey("acme", check); err == nil {
		t.Error("a key check must not unwrap as a data key")
	}
}

func TestParseMasterKey(t *testing.T) {
	raw := bytes.Repeat([]byte{0xab}, KeySize)
	for _, text := range []string{
		base64.StdEncoding.EncodeToString(raw),
		base64.RawURLEncoding.EncodeToString(raw) + "\n",
		hex.EncodeToString(raw),
	} {
		if _, err := ParseMasterKey(text); err != nil {
			t.Errorf("ParseMasterKey(%q): %v", text, err)
		}
	}
	for _, text := range []string{"", "short", base64.StdEncoding.EncodeToString(raw[:16]), strings.Repeat("z", 64)} {
		_, err := ParseMasterKey(text)
		if err == nil {
			t.Errorf("ParseMasterKey(%q) succeeded", text)
		} else if text != "" && strings.Contains(err.Error(), text) {
			t.Errorf("error repeats the key text: %v", err)
		}
	}
}

func TestMACKeySurvivesWrappingAndSeparatesPurposes(t *testing.T) {
	m := mustMaster(t)
	k, wrapped, err := m.NewMACKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := m.UnwrapMACKey(wrapped)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.Sum("caller-key", "cbk_x"), k2.Sum("caller-key", "cbk_x")) {
		t.Fatal("unwrapped MAC key computes different hashes")
	}
	if bytes.Equal(k.Sum("caller-key", "x"), k.Sum("token", "x")) {
		t.Fatal("hashes for different purposes are equal")
	}
	// HMAC-SHA256 under the key, of the purpose, a zero byte and the data;
	// AppendSum the same, after what it is given. A pooled state is reused
	// with its buffer: a long string first, then a short one.
	for _, data := range []string{strings.Repeat("long data ", 50), "x"} {
		mac := hmac.New(sha256.New, k.key)
		mac.Write([]byte("token\x00" + data))
		want := mac.Sum(nil)
		if got := k.Sum("token", data); !bytes.Equal(got, want) {
			t.Fatalf("Sum(token, %.10q) = %x, want %x", data, got, want)
		}
		if got := k.AppendSum([]byte("head"), "token", []byte(data)); string(got[:4]) != "head" || !bytes.Equal(got[4:], want) {
			t.Fatalf("AppendSum(head, token, %.10q) = %x, want head and %x", data, got, want)
		}
	}
	if _, err := mustMaster(t).UnwrapMACKey(wrapped); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("another master key unwrapped the MAC key: %v", err)
	}
	if _, err := m.UnwrapDataKey("", wrapped); !errors.Is(err, ErrDecrypt) {
		t.Fatal("a wrapped MAC key opened as a data key")
	}
}

// During a rotation both keys open what they wrapped and verify records
// they tagged; re-wrapped keys open only under the new master key, to the
// same keys (fields sealed before and MAC sums made before stay valid);
// Reseal moves an account to a fresh data key that the old one does not
// open.
func TestRotationKeys(t *testing.T) {
	old, next := mustMaster(t), mustMaster(t)
	masters := NewMasters(next, old)
	masters.Use(old)
	if err := masters.Bind([]byte("db")); err != nil {
		t.Fatal(err)
	}
	dk, wrapped, err := masters.NewDataKey("acme")
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := dk.Seal(FieldClientSecret, []byte("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	mac, wrappedMAC, err := old.NewMACKey()
	if err != nil {
		t.Fatal(err)
	}
	oldRecord := masters.SealRecord([]byte("accounts"), []byte("acme"), []byte("{}"))

	masters.Use(next)
	if masters.UnderCurrent(wrapped) {
		t.Fatal("a key wrapped by the old master key is said to be under the new one")
	}
	if data, current, err := masters.OpenRecord([]byte("accounts"), []byte("acme"), oldRecord); err != nil || current || string(data) != "{}" {
		t.Fatalf("a record tagged under the old key during a rotation: %q, %v, %v", data, current, err)
	}
	newRecord := masters.SealRecord([]byte("accounts"), []byte("acme"), []byte("{}"))
	if _, current, err := masters.OpenRecord([]byte("accounts"), []byte("acme"), newRecord); err != nil || !current {
		t.Fatalf("a record tagged under the new key: %v, %v", current, err)
	}
	onlyOld := NewMasters(old)
	if err := onlyOld.Bind([]byte("db")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := onlyOld.OpenRecord([]byte("accounts"), []byte("acme"), newRecord); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("the old key alone verified a record tagged under the new one: %v", err)
	}

	rewrapped, err := masters.RewrapDataKey("acme", wrapped)
	if err != nil || !masters.UnderCurrent(rewrapped) {
		t.Fatalf("rewrap: %v", err)
	}
	if _, err := onlyOld.UnwrapDataKey("acme", rewrapped); !errors.Is(err, ErrDecrypt) || !strings.Contains(err.Error(), next.ID()) {
		t.Fatalf("old master key opened the re-wrapped data key, or did not say which key it needs: %v", err)
	}
	if _, err := masters.RewrapDataKey("other", wrapped); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("re-wrapping under another account's name: %v", err)
	}
	dk2, err := next.UnwrapDataKey("acme", rewrapped)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := dk2.Open(FieldClientSecret, sealed); err != nil || string(got) != "s3cret" {
		t.Fatalf("field sealed before the rewrap: %q, %v", got, err)
	}

	rewrappedMAC, err := masters.RewrapMACKey(wrappedMAC)
	if err != nil {
		t.Fatal(err)
	}
	mac2, err := next.UnwrapMACKey(rewrappedMAC)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mac.Sum("p", "x"), mac2.Sum("p", "x")) {
		t.Fatal("the re-wrapped MAC key makes other sums")
	}
	if _, err := NewMasters(next).RewrapMACKey(wrappedMAC); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("re-wrapping without the key that wrapped it: %v", err)
	}

	values := []Sealed{{Field: FieldClientSecret, Value: &sealed}}
	resealed, err := masters.Reseal("acme", wrapped, values)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dk.Open(FieldClientSecret, sealed); !errors.Is(err, ErrDecrypt) {
		t.Fatal("the old data key opens a value sealed again")
	}
	if _, err := onlyOld.UnwrapDataKey("acme", resealed); !errors.Is(err, ErrDecrypt) {
		t.Fatal("the old master key opens the fresh data key")
	}
	dk3, err := next.UnwrapDataKey("acme", resealed)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := dk3.Open(FieldClientSecret, sealed); err != nil || string(got) != "s3cret" {
		t.Fatalf("value sealed again: %q, %v", got, err)
	}
}

// A wrapped key names the master key that wrapped it; keys wrapped by
// earlier versions, without the name, still open.
func TestWrappedKeysNameTheirMasterKey(t *testing.T) {
	m := mustMaster(t)
	_, wrapped, err := m.NewDataKey("acme")
	if err != nil {
		t.Fatal(err)
	}
	if WrappedBy(wrapped) != m.ID() || len(m.ID()) != 16 {
		t.Fatalf("a new wrapped key names %q, want %q", WrappedBy(wrapped), m.ID())
	}
	if other := mustMaster(t); other.ID() == m.ID() {
		t.Fatal("two master keys have one id")
	}
	legacy, err := sealWith(m.aead, make([]byte, KeySize), additionalData("data-key", "acme", ""))
	if err != nil {
		t.Fatal(err)
	}
	if WrappedBy(legacy) != "" {
		t.Fatal("a key wrapped by an earlier version names a master key")
	}
	if _, err := m.UnwrapDataKey("acme", legacy); err != nil {
		t.Fatalf("a key wrapped by an earlier version: %v", err)
	}
	again, err := ParseMasterKey(base64.StdEncoding.EncodeToString(m.raw))
	if err != nil || again.ID() != m.ID() {
		t.Fatalf("the same key parsed again has another id: %v", err)
	}
}
