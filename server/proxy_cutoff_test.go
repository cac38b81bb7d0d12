package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// An answer the proxy cuts off is a failed call in the audit trail and the
// request log, with the reason; before, an answer cut off at the size
// bound (or broken off by the API) was recorded as OK, so the trail said a
// call succeeded whose caller got a broken answer.
func TestProxyCutOffAnswersAreRecordedAsFailed(t *testing.T) {
	const limit = 16 << 20 // more than a loopback connection buffers, so that a caller that stops reading is noticed
	cfg, fake, logs := newConfig(t)
	cfg.Proxy.MaxResponseBytes = limit
	b := startWith(t, cfg, fake, logs)
	b.linkAPIKey(t, "keyed")

	chunk := []byte(strings.Repeat("b", 32<<10))
	b.fake.SetAPIHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v2/declared": // refused before anything is passed on
			w.Header().Set("Content-Length", "20000000")
			_, _ = w.Write(chunk)
		case "/api/v2/streamed": // no Content-Length: the size shows only while streaming
			for i := 0; i <= limit/len(chunk); i++ {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		case "/api/v2/broken": // the API's connection breaks mid-way
			w.Header().Set("Content-Length", "3000")
			_, _ = w.Write(chunk[:1000])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		case "/api/v2/abandoned": // far more than the connections buffer, and less than the limit
			for i := 0; i < limit/len(chunk)-1 && r.Context().Err() == nil; i++ {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}
	}))

	for _, tc := range []struct {
		path, code string
		status     int
		bytes      int64 // -1: any
		detail     string
	}{
		{"/v2/declared", "RESOURCE_EXHAUSTED", http.StatusOK, 0, ""},
		{"/v2/streamed", "RESOURCE_EXHAUSTED", http.StatusOK, limit, "the answer was cut off after 16777216 bytes: the response body is larger than the egress proxy's limit of 16777216 bytes"},
		{"/v2/broken", "UNAVAILABLE", http.StatusOK, 1000, "the answer was cut off after 1000 bytes: the account's API broke off its answer"},
		{"/v2/abandoned", "CANCELLED", http.StatusOK, -1, "the answer was cut off after"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, b.proxyURL+"/v1/accounts/keyed/proxy"+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Proxy-Authorization", "Bearer "+b.keys.svc)
			// A broken answer may not even reach the caller's headers.
			if resp, err := b.proxyClient(nil).Do(req); err == nil {
				if tc.path == "/v2/abandoned" {
					_, _ = resp.Body.Read(make([]byte, 1)) // the caller reads a little and goes away
				} else {
					_, _ = io.Copy(io.Discard, resp.Body)
				}
				resp.Body.Close()
			}

			ev := proxyEvent(t, b, tc.path)
			pc := ev.GetProxyCall()
			if ev.GetCode() != tc.code || pc.GetStatus() != int32(tc.status) || (tc.bytes >= 0 && pc.GetResponseBytes() != tc.bytes) ||
				!strings.HasPrefix(ev.GetDetail(), tc.detail) {
				t.Errorf("audit event: code %s, status %d, %d response bytes, detail %q; want %s, %d, %d, %q",
					ev.GetCode(), pc.GetStatus(), pc.GetResponseBytes(), ev.GetDetail(), tc.code, tc.status, tc.bytes, tc.detail)
			}
			if line := proxyLogLine(t, b, tc.path); line.Code != tc.code || line.Proxy.Status != tc.status || !strings.HasPrefix(line.Detail, tc.detail) {
				t.Errorf("request log line: %+v; want code %s, status %d, detail %q", line, tc.code, tc.status, tc.detail)
			}
		})
	}
}

// proxyEvent is the newest audit event of a proxied call to path below the
// account's API base URL. A call whose caller went away may still be
// finishing, so it waits a little for the event.
func proxyEvent(t *testing.T, b *broker, path string) *credbrokerv1.AuditEvent {
	t.Helper()
	for range 200 {
		events, err := b.audit.ListAuditEvents(context.Background(), &credbrokerv1.ListAuditEventsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range events.GetEvents() {
			if ev.GetMethod() == "proxy" && ev.GetProxyCall().GetPath() == path {
				return ev
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no audit event for a proxied call to %s", path)
	return nil
}

// requestLine is the request log line of a proxied call.
type requestLine struct {
	Msg    string `json:"msg"`
	Code   string `json:"code"`
	Detail string `json:"detail"`
	Proxy  struct {
		Path          string `json:"path"`
		Status        int    `json:"status"`
		ResponseBytes int64  `json:"response_bytes"`
	} `json:"proxy"`
}

// proxyLogLine is the last request log line of a proxied call to path.
func proxyLogLine(t *testing.T, b *broker, path string) requestLine {
	t.Helper()
	for range 200 { // the line follows the call's audit event, which may be listed first
		var found *requestLine
		for _, raw := range strings.Split(b.logs.String(), "\n") {
			var line requestLine
			if json.Unmarshal([]byte(raw), &line) == nil && line.Msg == "request" && line.Proxy.Path == path {
				found = &line
			}
		}
		if found != nil {
			return *found
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no request log line for a proxied call to %s", path)
	return requestLine{}
}
