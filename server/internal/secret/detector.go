package secret

import (
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
// provider's error description, an API's response headers), in the forms a
// server may echo it in: raw; URL-encoded (query or path escaping); hex;
// base64 with either alphabet, padded or not, alone or inside a longer
// encoded text such as a Basic Authorization header of "client_id:secret"
// (also with both form-urlencoded first, as RFC 6749 §2.3.1 has it); and
// with non-printable characters (controls, zero-width spaces) slipped in
// between its characters. A fragment of MinFragment characters of any form
// counts too. Such text should be withheld whole: cutting the secret out
// could miss a form of it.
type Detector struct {
	// forms are the secret's encodings, without non-printable characters.
	forms []string
}

var base64Alphabets = []*base64.Encoding{base64.StdEncoding, base64.URLEncoding}

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
	d.add(hex.EncodeToString([]byte(raw)))
	d.add(strings.ToUpper(hex.EncodeToString([]byte(raw))))
	// Inside a longer base64 text the secret starts at one of three
	// offsets into a 3-byte group, and each encodes it differently.
	// Dropping its first one or two bytes aligns it; the result is a
	// fragment, so it only counts if MinFragment long.
	for _, e := range escaped {
		for skip := 0; skip < 3 && skip < len(e); skip++ {
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
	return d
}

func (d *Detector) add(form string) {
	if form = printable(form); form != "" && !slices.Contains(d.forms, form) {
		d.forms = append(d.forms, form)
	}
}

// stableBase64 is the part of s's base64 encoding that does not depend on
// what follows s: its last character is cut if it also holds padding bits.
// It is a prefix of the padded and of the unpadded encoding.
func stableBase64(enc *base64.Encoding, s string) string {
	return enc.EncodeToString([]byte(s))[:len(s)*4/3]
}

// FoundIn reports whether text, with its non-printable characters removed,
// holds the secret, or MinFragment characters of it in a row, in any form.
// Forms shorter than MinFragment (of a short secret) count only whole.
func (d Detector) FoundIn(text string) bool {
	if len(d.forms) == 0 || text == "" {
		return false
	}
	text = printable(text)
	for _, f := range d.forms {
		if len(f) < MinFragment {
			if strings.Contains(text, f) {
				return true
			}
		} else if shareRun(text, f, MinFragment) {
			return true
		}
	}
	return false
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

// printable is s without its non-printable characters.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return -1
	}, s)
}
