package secret

import (
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// interleave puts sep between the characters of s.
func interleave(s, sep string) string { return strings.Join(strings.Split(s, ""), sep) }

func TestDetectorFindsEveryForm(t *testing.T) {
	const id, canary = "client id", "canary/SECRET+5f1e 9a&x=y"
	d := NewDetector(New(canary), id)
	basic := base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id) + ":" + url.QueryEscape(canary)))
	found := map[string]string{
		"raw":                         "bad secret " + canary + ".",
		"query escaped":               "client_secret=" + url.QueryEscape(canary) + "&grant_type=client_credentials",
		"path escaped":                "/v1/" + url.PathEscape(canary),
		"hex":                         hex.EncodeToString([]byte(canary)),
		"upper-case hex":              strings.ToUpper(hex.EncodeToString([]byte(canary))),
		"base64 std":                  base64.StdEncoding.EncodeToString([]byte(canary)),
		"base64 std unpadded":         base64.RawStdEncoding.EncodeToString([]byte(canary)),
		"base64 url":                  base64.URLEncoding.EncodeToString([]byte(canary)),
		"base64 url unpadded":         base64.RawURLEncoding.EncodeToString([]byte(canary)),
		"base64 of id:secret":         "Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+canary)),
		"base64 url of id:secret":     base64.RawURLEncoding.EncodeToString([]byte(id + ":" + canary)),
		"RFC 6749 Basic credentials":  "got Authorization: Basic " + basic,
		"base64 inside a header, +1":  base64.StdEncoding.EncodeToString([]byte("Bearer " + canary)),
		"base64 inside a header, +2":  base64.StdEncoding.EncodeToString([]byte("x-api-key: " + canary)),
		"base64 inside a header, +0":  base64.URLEncoding.EncodeToString([]byte("key=" + canary + "; more")),
		"control characters":          interleave(canary, "\x01"),
		"zero-width spaces":           interleave(canary, "\u200b"),
		"escaped with controls":       interleave(url.QueryEscape(canary), "\x00\x7f"),
		"a fragment":                  "...ET+5f1e 9a&x... ",
		"a truncated Basic header":    "Basic " + basic[:24],
		"a fragment after a newline":  "line\nRET+5f1e 9a&",
		"bidi controls around pieces": "\u202e" + canary[:6] + "\u2066" + canary[6:] + "\u2069",
		"spaces slipped in":           interleave(canary, " "),
		"punctuation slipped in":      interleave(canary, "-."),
		"upper-cased":                 strings.ToUpper(canary),
		"reversed":                    reverse(canary),
		"base32":                      base32.StdEncoding.EncodeToString([]byte(canary)),
		"base32 hex, unpadded":        base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString([]byte(canary)),
		"base32, lower-cased":         strings.ToLower(base32.StdEncoding.EncodeToString([]byte(canary))),
		"base32 inside a header":      base32.StdEncoding.EncodeToString([]byte("x-api-key: " + canary)),
	}
	for name, text := range found {
		if !d.FoundIn(text) {
			t.Errorf("%s: %q not detected", name, text)
		}
	}

	notFound := map[string]string{
		"empty":                   "",
		"unrelated":               "invalid_client: Client authentication failed.",
		"the client id":           "unknown client " + id,
		"a short fragment":        canary[3 : 3+MinFragment-1],
		"another secret":          "bad secret other/SECRET+0123 4b&q=z",
		"another secret's base64": base64.StdEncoding.EncodeToString([]byte("other/SECRET+0123 4b&q=z")),
	}
	for name, text := range notFound {
		if d.FoundIn(text) {
			t.Errorf("%s: %q detected", name, text)
		}
	}
	if (Detector{}).FoundIn(canary) || NewDetector(String{}, id).FoundIn(canary) {
		t.Error("a detector of no secret finds one")
	}
}

// Inside a longer base64 text, a secret is found at every offset into a
// 3-byte group, with either alphabet.
func TestDetectorFindsSecretInsideBase64(t *testing.T) {
	const token = "tok3nAAAAbbbbCCCCddddEEEE"
	d := NewDetector(New(token), "")
	for _, prefix := range []string{"", "B", "Be", "Bea", "Bear", "Beare"} {
		for _, enc := range base64Alphabets {
			if text := enc.EncodeToString([]byte(prefix + token + "!")); !d.FoundIn(text) {
				t.Errorf("base64 of %q + token + \"!\" (%q) not detected", prefix, text)
			}
		}
	}
}

// A secret shorter than MinFragment counts only whole.
func TestDetectorOfShortSecret(t *testing.T) {
	d := NewDetector(New("s3cr3t"), "")
	for text, want := range map[string]bool{
		"was s3cr3t!":  true,
		"s\x013cr3t":   true,
		"czNjcjN0":     true, // base64
		"s3cr3":        false,
		"no such text": false,
	} {
		if got := d.FoundIn(text); got != want {
			t.Errorf("FoundIn(%q) = %v, want %v", text, got, want)
		}
	}
}

// The index of runs only spares comparisons: on texts made of pieces of a
// secret's forms and of other text, FoundIn answers as comparing the text
// with every form does.
func TestDetectorIndexMissesNothing(t *testing.T) {
	d := NewDetector(New("jc-9f8e7d6c5b4a39281706f5e4d3c2b1a0"), "client-1")
	exhaustive := func(text string) bool {
		for _, set := range []struct {
			text  string
			forms []string
		}{{printable(text), d.forms}, {fold(text), d.folded}} {
			for _, f := range set.forms {
				if (len(f) < MinFragment && strings.Contains(set.text, f)) || (len(f) >= MinFragment && shareRun(set.text, f, MinFragment)) {
					return true
				}
			}
		}
		return false
	}
	rng := rand.New(rand.NewPCG(1, 2))
	found := 0
	for range 20000 {
		var b strings.Builder
		for range 1 + rng.IntN(3) {
			if rng.IntN(2) == 0 {
				f := d.forms[rng.IntN(len(d.forms))]
				i := rng.IntN(len(f))
				b.WriteString(f[i : i+rng.IntN(min(len(f)-i, 16)+1)])
			} else {
				b.WriteString(strconv.FormatUint(rng.Uint64(), 36))
			}
		}
		text := b.String()
		want := exhaustive(text)
		if got := d.FoundIn(text); got != want {
			t.Fatalf("FoundIn(%q) = %v, comparing with every form says %v", text, got, want)
		}
		if want {
			found++
		}
	}
	if found < 1000 || found > 19000 {
		t.Fatalf("%d of 20,000 texts hold the secret: the test needs both kinds", found)
	}
}

// A response header checked for an echo of the access token.
func BenchmarkDetectorFoundIn(b *testing.B) {
	d := NewDetector(New("jc-fake-9f8e7d6c5b4a39281706f5e4d3c2b1a0"), "")
	for b.Loop() {
		d.FoundIn("application/json; charset=utf-8")
		d.FoundIn("Wed, 02 Dec 2026 06:19:25 GMT")
	}
}
