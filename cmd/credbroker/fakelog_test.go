package main

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

// The stand-ins log each answer (method, path, client id, status,
// outcome) and never a secret, a token or a query.
func TestStandInLogsEachAnswer(t *testing.T) {
	var logs bytes.Buffer
	srv := httptest.NewServer(logRequests(jumpcloudfake.New("demo-client", "canary-SECRET-log"), slog.New(slog.NewTextHandler(&logs, nil)), "canary-SECRET-log", "canary-KEY-log"))
	defer srv.Close()
	for _, secret := range []string{"canary-SECRET-log", "canary-WRONG-log"} {
		req, _ := http.NewRequest("POST", srv.URL+jumpcloudfake.TokenPath, strings.NewReader(url.Values{"grant_type": {"client_credentials"}, "scope": {"api"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("demo-client", secret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	resp, err := http.Get(srv.URL + jumpcloudfake.APIPath + "/v2/systems?filter=canary-QUERY")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// A secret typed into the wrong field, or a path.
	req, _ := http.NewRequest("POST", srv.URL+jumpcloudfake.TokenPath, strings.NewReader(url.Values{"grant_type": {"client_credentials"}, "scope": {"api"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("canary-SECRET-log", "canary-SECRET-log")
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp, err = http.Get(srv.URL + jumpcloudfake.APIPath + "/organizations/canary-KEY-log"); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	for i, want := range []string{
		`method=POST path=/oauth2/token status=200 outcome="token issued" client_id=demo-client`,
		`method=POST path=/oauth2/token status=401 outcome=invalid_client client_id=demo-client`,
		`method=GET path=/api/v2/systems status=401 outcome=Unauthorized`,
		`method=POST path=/oauth2/token status=401 outcome=invalid_client client_id="[a secret]"`,
		`method=GET path="/api/organizations/[a secret]" status=401 outcome=Unauthorized`,
	} {
		if len(lines) != 5 || !strings.HasSuffix(lines[i], want) {
			t.Fatalf("the log:\n%s\nwant line %d to end with %s", logs.String(), i+1, want)
		}
	}
	if strings.Contains(logs.String(), "canary") || strings.Contains(logs.String(), "jc-fake-") {
		t.Fatalf("the log holds a secret, a token or a query:\n%s", logs.String())
	}
}
