package jumpcloudfake

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// APIRequest is what the fake's API last received, for tests to inspect.
type APIRequest struct {
	Method   string
	Path     string // escaped, below APIPath
	RawQuery string
	Header   http.Header
	Body     []byte
}

// SetAPIKey makes the API accept key. With orgID set (a multi-tenant
// admin's key) every call must also send that x-org-id.
func (f *Fake) SetAPIKey(key, orgID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.apiKeys[key] = orgID
}

// RevokeAPIKey makes the API reject key, as "Generate New API Key" does.
func (f *Fake) RevokeAPIKey(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.apiKeys, key)
}

// RevokeTokens makes the API reject every token issued so far.
func (f *Fake) RevokeTokens() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.issued)
}

// SetAPIHandler answers authenticated API calls other than GET
// /organizations; by default the fake answers with a JSON summary of the
// request (never its credentials).
func (f *Fake) SetAPIHandler(h http.Handler) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.apiHandler = h
}

// SetAPIDelay makes every API answer take d, as a real API's would.
func (f *Fake) SetAPIDelay(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.apiDelay = d
}

// APIRequests is the number of API calls received so far, good or bad.
func (f *Fake) APIRequests() int { return int(f.apiRequests.Load()) }

// OrganizationChecks is the number of GET /organizations calls received so
// far (the broker's check of an API key), good or bad.
func (f *Fake) OrganizationChecks() int { return int(f.orgChecks.Load()) }

// LastAPIRequest is the last API call received.
func (f *Fake) LastAPIRequest() APIRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastAPI
}

var orgIDPattern = regexp.MustCompile(`^[0-9a-f]{24}$`)

// serveAPI checks an API call's credentials as JumpCloud does: 401 for a
// missing or unknown credential, 400 for a malformed x-org-id and 404 for
// an organization the key does not belong to.
func (f *Fake) serveAPI(w http.ResponseWriter, r *http.Request) {
	f.apiRequests.Add(1)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	path := strings.TrimPrefix(r.URL.EscapedPath(), APIPath)
	if path == "/organizations" && r.Method == http.MethodGet {
		f.orgChecks.Add(1)
	}
	f.mu.Lock()
	f.lastAPI = APIRequest{Method: r.Method, Path: path, RawQuery: r.URL.RawQuery, Header: r.Header.Clone(), Body: body}
	orgID, knownKey := f.apiKeys[r.Header.Get("x-api-key")]
	bearer, hasBearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	knownToken := hasBearer && f.issued[bearer]
	handler, delay := f.apiHandler, f.apiDelay
	f.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}

	gotOrg := r.Header.Get("x-org-id")
	switch {
	case r.Header.Get("x-api-key") != "" && !knownKey, r.Header.Get("x-api-key") == "" && !knownToken:
		apiError(w, http.StatusUnauthorized, "Unauthorized")
		return
	case gotOrg != "" && !orgIDPattern.MatchString(gotOrg):
		apiError(w, http.StatusBadRequest, "invalid organization id")
		return
	case knownKey && orgID != "" && gotOrg != orgID:
		apiError(w, http.StatusNotFound, "organization not found")
		return
	}
	if path == "/organizations" && r.Method == http.MethodGet {
		org := gotOrg
		if org == "" {
			org = orgID
		}
		writeJSON(w, http.StatusOK, map[string]any{"results": []map[string]string{{"_id": org, "displayName": "Fake Org"}}, "totalCount": 1})
		return
	}
	if handler != nil {
		r.Body = io.NopCloser(bytes.NewReader(body))
		handler.ServeHTTP(w, r)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"method": r.Method, "path": path, "query": r.URL.RawQuery, "body_bytes": len(body)})
}

// apiError answers in JumpCloud's API error format.
func apiError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]any{"code": code, "message": msg, "status": http.StatusText(code)})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
