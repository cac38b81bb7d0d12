package jumpcloudfake

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// RenewalsPath is where the fake serves its Renewals as JSON (GET) and
// starts their peaks anew (POST), for bench/scale.sh; JumpCloud has no such
// thing.
const RenewalsPath = "/fake/renewals"

// Renewals is what the fake saw of the tokens it issued to each client:
// enough to tell whether a broker keeps every token valid with one request
// per token's life, and how it spreads and bounds those requests.
type Renewals struct {
	Issued  int `json:"issued"`  // tokens issued
	Clients int `json:"clients"` // clients issued a token
	Renewed int `json:"renewed"` // tokens issued to a client that already had one
	// Lapsed counts tokens issued after the client's previous token had
	// expired, and Expired the clients whose latest token has expired now:
	// a broker that keeps tokens valid leaves both at 0.
	Lapsed  int `json:"lapsed"`
	Expired int `json:"expired"`
	// Early counts tokens issued while the client's previous token had
	// more than half its life ahead of it: duplicate requests.
	Early int `json:"early"`
	// PeakInFlight is the most token requests being answered at once, and
	// PeakPerSecond the most tokens issued within one second.
	PeakInFlight  int `json:"peak_in_flight"`
	PeakPerSecond int `json:"peak_per_second"`
}

// renewals keeps, for each client, when its latest token was issued and
// when it expires, and counts what Renewals reports.
type renewals struct {
	mu        sync.Mutex
	latest    map[string][2]time.Time // client id -> [issued, expires]
	perSecond map[int64]int
	inFlight  int
	r         Renewals
}

// begin counts a token request being answered; call the func it returns
// when it has been.
func (rn *renewals) begin() func() {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	rn.inFlight++
	rn.r.PeakInFlight = max(rn.r.PeakInFlight, rn.inFlight)
	return func() {
		rn.mu.Lock()
		rn.inFlight--
		rn.mu.Unlock()
	}
}

// issued records a token for clientID, issued at now for ttl.
func (rn *renewals) issued(clientID string, now time.Time, ttl time.Duration) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	if rn.latest == nil {
		rn.latest, rn.perSecond = map[string][2]time.Time{}, map[int64]int{}
	}
	rn.r.Issued++
	if prev, ok := rn.latest[clientID]; ok {
		rn.r.Renewed++
		if now.After(prev[1]) {
			rn.r.Lapsed++
		}
		if prev[1].Sub(now) > prev[1].Sub(prev[0])/2 {
			rn.r.Early++
		}
	}
	rn.latest[clientID] = [2]time.Time{now, now.Add(ttl)}
	sec := now.Unix()
	rn.perSecond[sec]++
	rn.r.PeakPerSecond = max(rn.r.PeakPerSecond, rn.perSecond[sec])
}

// Renewals reports what the fake has issued so far.
func (f *Fake) Renewals() Renewals {
	rn := &f.renewals
	rn.mu.Lock()
	defer rn.mu.Unlock()
	r := rn.r
	r.Clients = len(rn.latest)
	now := time.Now()
	for _, l := range rn.latest {
		if now.After(l[1]) {
			r.Expired++
		}
	}
	return r
}

// ResetPeaks starts PeakInFlight and PeakPerSecond anew, so that they
// describe what comes next (renewals, not the first tokens of linking).
func (f *Fake) ResetPeaks() {
	rn := &f.renewals
	rn.mu.Lock()
	defer rn.mu.Unlock()
	rn.r.PeakInFlight, rn.r.PeakPerSecond = rn.inFlight, 0
	clear(rn.perSecond)
}

func (f *Fake) serveRenewals(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		f.ResetPeaks()
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(f.Renewals())
}
