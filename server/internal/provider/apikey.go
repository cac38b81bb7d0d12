package provider

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/credbroker/credbroker/server/internal/secret"
)

// maxErrorBody bounds how much of an API error answer is read to find its
// message.
const maxErrorBody = 64 << 10

// CheckAPIKey proves a JumpCloud API key (and organization ID, when set)
// with `GET {API base}/organizations`, the cheapest call that needs both.
// JumpCloud answers 401 for a bad key, 400 for a malformed organization ID
// and 404 for an unknown one: all of them are a *RejectedError. A redirect
// is a *RedirectedError: it is not followed, since the request carries the key.
func (c *Client) CheckAPIKey(ctx context.Context, cr Credentials) error {
	start := time.Now()
	err := c.checkAPIKey(ctx, cr)
	c.observe(cr.Kind, start, err)
	return err
}

func (c *Client) checkAPIKey(ctx context.Context, cr Credentials) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := usable("API base URL", c.APIBaseURL(cr)); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.APIBaseURL(cr)+"/organizations", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("x-api-key", cr.ClientSecret.Reveal())
	for k, v := range Headers(cr) {
		req.Header.Set(k, v)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return classify(err, cr)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	switch code := resp.StatusCode; {
	case code == http.StatusOK:
		return nil
	case code == http.StatusBadRequest || code == http.StatusUnauthorized || code == http.StatusForbidden || code == http.StatusNotFound:
		return &RejectedError{StatusCode: code, Description: providerText(apiErrorMessage(body), maxDescriptionLen, secret.NewDetector(cr.ClientSecret, ""))}
	case isRedirect(code):
		return &RedirectedError{StatusCode: code}
	default:
		return &UnavailableError{Message: fmt.Sprintf("HTTP %d", code), RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
	}
}

// apiErrorMessage is the `message` of a JumpCloud API error answer
// ({"code": ..., "message": "...", "status": "..."}), or "" if the body is
// not one.
func apiErrorMessage(body []byte) string {
	var e struct {
		Message string `json:"message"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		return ""
	}
	return strings.TrimSpace(e.Message)
}
