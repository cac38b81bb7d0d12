package secret

import (
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"slices"
	"strings"
	"unicode"
)

// MinFragment is the shortest run of a secret's characters (in any of its
// forms) that counts as the secret: a text that echoes this much of it has
// given enough away to be withheld.
const MinFragment = 12

// Detector finds a secret in text that came from outside the broker (a
// provider's error fields, an API's response headers), in the forms a
// server may echo it in: raw or reversed; URL-encoded (query or path
// escaping); hex; base32 or base64 with any alphabet, padded or not, alone
// or inside a longer encoded text such as a Basic Authorization header of
// "client_id:secret" (also with both form-urlencoded first, as RFC 6749
// §2.3.1 has it). Texts and forms are compared twice: with non-printable
// characters removed, and folded (lower-cased, with everything but letters
// and digits removed), so that a secret with characters slipped in between
// its own (controls, zero-width or plain spaces, punctuation) or with its
// case changed is found too. A fragment of MinFragment characters of any
// form, either way, counts as well. Such text should be withheld whole:
// cutting the secret out could miss a form of it.
type Detector struct {
	// forms are the secret's encodings with non-printable characters
	// removed, and folded.
	forms, folded []string
	// formRuns and foldedRuns index their runs of MinFragment bytes.
	formRuns, foldedRuns runHashes
}

var (
	base64Alphabets = []*base64.Encoding{base64.StdEncoding, base64.URLEncoding}
	base32Alphabets = []*base32.Encoding{base32.StdEncoding, base32.HexEncoding}
)

// NewDetector returns a Detector of s. clientID, if not empty, is the
// client ID that s is sent with in a Basic Authorization header.
func NewDetector(s String, clientID string) Detector {
	var d Detector
	raw := s.Reveal()
	if raw == "" {
		return d
	}
	escaped := []string{raw, url.QueryEscape(raw), url.PathEscape(raw)}
	for _, e := range escaped {
		d.add(e)
	}
	d.add(reverse(raw))
	d.add(hex.EncodeToString([]byte(raw)))
	// Inside a longer encoded text the secret starts at one of several
	// offsets into a group of bytes (3 for base64, 5 for base32), and each
	// encodes it differently. Dropping its first bytes aligns it; the
	// result is a fragment, so it only counts if MinFragment long.
	for _, e := range escaped {
		for skip := 0; skip < 5 && skip < len(e); skip++ {
			for _, enc := range base32Alphabets {
				if f := stableBase32(enc, e[skip:]); skip == 0 || len(f) >= MinFragment {
					d.add(f)
				}
			}
			if skip >= 3 {
				continue
			}
			for _, enc := range base64Alphabets {
				if f := stableBase64(enc, e[skip:]); skip == 0 || len(f) >= MinFragment {
					d.add(f)
				}
			}
		}
	}
	if clientID != "" {
		for _, pair := range []string{clientID + ":" + raw, url.QueryEscape(clientID) + ":" + url.QueryEscape(raw)} {
			for _, enc := range base64Alphabets {
				d.add(stableBase64(enc, pair))
			}
		}
	}
	d.index()
	return d
}

// index makes formRuns and foldedRuns from forms and folded.
func (d *Detector) index() {
	d.formRuns, d.foldedRuns = newRunHashes(d.forms), newRunHashes(d.folded)
}

func (d *Detector) add(form string) {
	for _, f := range []struct {
		set  *[]string
		form string
	}{{&d.forms, printable(form)}, {&d.folded, fold(form)}} {
		if f.form != "" && !slices.Contains(*f.set, f.form) {
			*f.set = append(*f.set, f.form)
		}
	}
}

// stableBase64 is the part of s's base64 encoding that does not depend on
// what follows s: its last character is cut if it also holds padding bits.
// It is a prefix of the padded and of the unpadded encoding.
func stableBase64(enc *base64.Encoding, s string) string {
	return enc.EncodeToString([]byte(s))[:len(s)*4/3]
}

// stableBase32 is stableBase64 for base32, 5 bits a character.
func stableBase32(enc *base32.Encoding, s string) string {
	return enc.EncodeToString([]byte(s))[:len(s)*8/5]
}

// FoundIn reports whether text holds the secret, or MinFragment
// characters of it in a row, in any form, compared both ways. Forms
// shorter than MinFragment (of a short secret) count only whole.
func (d Detector) FoundIn(text string) bool {
	if text == "" {
		return false
	}
	return holds(printable(text), d.forms, d.formRuns) || holds(fold(text), d.folded, d.foldedRuns)
}

// holds reports whether text holds a form shorter than MinFragment, or a
// run of MinFragment bytes of a longer one; runs index the longer forms'
// runs, so that text and forms are compared only when one of text's runs
// may be one of theirs (every API answer's headers are checked, and
// searching each form for each run of each header cost a fifth of a
// proxied call).
func holds(text string, forms []string, runs runHashes) bool {
	if runs.anyIn(text) {
		for _, f := range forms {
			if len(f) >= MinFragment && shareRun(text, f, MinFragment) {
				return true
			}
		}
	}
	for _, f := range forms {
		if len(f) < MinFragment && strings.Contains(text, f) {
			return true
		}
	}
	return false
}

// runHashes are the hashes (see eachRun) of every run of MinFragment bytes
// of some texts, sorted. Equal runs hash equally, so a text none of whose
// runs' hashes is among them shares no run with those texts; a hash found
// may be a collision, which a comparison settles. About 4 bytes for each
// byte of the texts.
type runHashes []uint32

func newRunHashes(texts []string) runHashes {
	var hs runHashes
	for _, t := range texts {
		eachRun(t, func(h uint32) bool { hs = append(hs, h); return true })
	}
	slices.Sort(hs)
	return slices.Compact(hs)
}

// anyIn reports whether the hash of a run of text is among hs.
func (hs runHashes) anyIn(text string) bool {
	found := false
	eachRun(text, func(h uint32) bool {
		_, found = slices.BinarySearch(hs, h)
		return !found
	})
	return found
}

// runPrime is the base of eachRun's polynomial hash (FNV-1's prime).
const runPrime = 16777619

// eachRun calls fn with the hash of each run of MinFragment bytes of s, in
// order, until fn returns false: a polynomial in runPrime over the run's
// bytes (mod 2^32), rolled from one run to the next.
func eachRun(s string, fn func(uint32) bool) {
	if len(s) < MinFragment {
		return
	}
	var h, top uint32 = 0, 1 // top: runPrime^(MinFragment-1), the weight of a run's first byte
	for i := range MinFragment {
		h = h*runPrime + uint32(s[i])
		if i > 0 {
			top *= runPrime
		}
	}
	for i := 0; fn(h) && i+MinFragment < len(s); i++ {
		h = (h-uint32(s[i])*top)*runPrime + uint32(s[i+MinFragment])
	}
}

// shareRun reports whether a and b have n bytes in a row in common.
func shareRun(a, b string, n int) bool {
	if len(a) > len(b) {
		a, b = b, a
	}
	for i := 0; i+n <= len(a); i++ {
		if strings.Contains(b, a[i:i+n]) {
			return true
		}
	}
	return false
}

// fold is s lower-cased, with everything but letters and digits removed.
func fold(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r):
			return unicode.ToLower(r)
		}
		return -1
	}, s)
}

// reverse is s backwards.
func reverse(s string) string {
	r := []rune(s)
	slices.Reverse(r)
	return string(r)
}

// printable is s without its non-printable characters.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return -1
	}, s)
}

// And is a Detector of both d's secret and o's.
func (d Detector) And(o Detector) Detector {
	both := Detector{forms: append(slices.Clip(d.forms), o.forms...), folded: append(slices.Clip(d.folded), o.folded...)}
	both.index()
	return both
}
