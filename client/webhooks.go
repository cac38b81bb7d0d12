package client

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"time"
)

// WebhookTolerance is how far a delivery's timestamp may be from the
// receiver's clock: a delivery replayed later than this is refused.
const WebhookTolerance = 5 * time.Minute

// ErrWebhookSignature: a delivery's signature does not verify.
var ErrWebhookSignature = errors.New("the webhook delivery's signature does not verify")

// VerifyWebhook checks a webhook delivery, its headers and its body as
// received, with the endpoint's signing secret ("whsec_..."): the
// Credbroker-Signature must be the HMAC-SHA256 of the Credbroker-Timestamp,
// ".", and the body, and the timestamp within WebhookTolerance of now.
// A receiver answers 2xx only to a delivery that passes, and
// de-duplicates by the Credbroker-Event-Id header.
//
//	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
//	if err := client.VerifyWebhook(secret, r.Header, body, time.Now()); err != nil {
//		http.Error(w, err.Error(), http.StatusUnauthorized)
//		return
//	}
//	var e credbrokerv1.Event
//	err := protojson.Unmarshal(body, &e)
func VerifyWebhook(signingSecret string, header http.Header, body []byte, now time.Time) error {
	ts := header.Get("Credbroker-Timestamp")
	sent, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return ErrWebhookSignature
	}
	mac := hmac.New(sha256.New, []byte(signingSecret))
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	want := "v1=" + hex.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(header.Get("Credbroker-Signature")), []byte(want)) {
		return ErrWebhookSignature
	}
	if d := now.Sub(time.Unix(sent, 0)); d > WebhookTolerance || d < -WebhookTolerance {
		return errors.New("the webhook delivery's timestamp is too far from now: a replay, or a clock off")
	}
	return nil
}
