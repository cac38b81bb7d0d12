package gate

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/ratelimit"
	"github.com/credbroker/credbroker/server/internal/store"
)

// Bounds of what refusals holds between two flushes.
const (
	// maxRefusalTallies: refusals from further peer addresses are tallied
	// together, under otherPeers.
	maxRefusalTallies = 20
	// maxRefusalNames is how many distinct methods, and principals, an
	// event names; the others are only counted.
	maxRefusalNames = 5
)

// RefusalMethod is the audit trail's method of aggregated refusals of
// calls without valid credentials, and DeniedMethod that of refusals of a
// proven caller's calls beyond its allowance of events of their own.
const (
	RefusalMethod = "unauthenticated_calls"
	DeniedMethod  = "refused_calls"
)

// Each proven caller's refused calls (no grant, not an admin, over its rate
// limit) are audited one event each up to deniedBurst at once and
// deniedPerMinute a minute; beyond that they are tallied like calls
// without valid credentials, so that no caller can push out other events
// by sending calls it knows are refused.
const (
	deniedPerMinute = 20
	deniedBurst     = 20
)

// otherPeers is the peer address of the refusals beyond maxRefusalTallies
// in an interval.
const otherPeers = "other peers"

// refusals guards the broker against calls without valid credentials,
// which anyone who can reach it can send: each peer address has a budget
// of them (charged only for such calls, checked before any credential is
// looked at), and they are audited as one event per peer address and code
// per interval rather than one each, so that a flood can neither push real
// events out of the trail nor fill the log.
type refusals struct {
	limiter *ratelimit.Limiter
	// denied is each proven caller's allowance of refusals audited alone.
	denied   *ratelimit.Limiter
	audit    *audit.Log
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu      sync.Mutex
	tallies map[refusalKey]*tally
}

// refusalKey is what a tally counts: the refusals of one code from a peer
// address (calls without valid credentials) or of a proven principal.
type refusalKey struct{ peer, principal, code string }

// tally is what an interval's refusals of one key have in common: the
// methods, and the principals (from a peer address) or the resources (of
// a principal) they named.
type tally struct {
	calls         int
	first, last   time.Time
	methods, what names
}

func newRefusals(perSecond float64, burst int, interval time.Duration, al *audit.Log, log *slog.Logger, now func() time.Time) *refusals {
	return &refusals{
		limiter: ratelimit.New(perSecond, burst), denied: ratelimit.New(deniedPerMinute/60.0, deniedBurst),
		audit: al, log: log, interval: interval,
		now: now, tallies: map[refusalKey]*tally{},
	}
}

// peerKey is the address a call's budget and tally belong to: the peer's
// IP address without the port, and for IPv6 its /64 network, which one
// host usually holds whole.
func peerKey(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		return Truncate(host, MaxAuditResource)
	case ip.To4() == nil:
		return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
	return ip.String()
}

// wait is how long the peer of call c must wait before the broker looks at
// its credentials again, having refused too many of its calls; 0 if it need not.
func (r *refusals) wait(c *Call) time.Duration {
	return r.limiter.Wait(c.budget+peerKey(c.Peer), c.Time)
}

// charge counts a call that failed authentication against its peer's budget.
func (r *refusals) charge(c *Call) {
	r.limiter.Charge(c.budget+peerKey(c.Peer), c.Time)
}

// aloneAllowed reports whether the refused call c of a proven caller may
// still have an audit event of its own; if not, it is to be tallied.
func (r *refusals) aloneAllowed(c *Call) bool {
	ok, _ := r.denied.Allow(c.Principal, c.Time)
	return ok
}

// add tallies call c, refused with code: by its peer address if it proved
// no identity, else by its principal.
func (r *refusals) add(c *Call, code codes.Code) {
	k, what := refusalKey{peer: peerKey(c.Peer), code: grpcerr.CodeName(code)}, c.Principal
	if !c.unproven {
		k, what = refusalKey{principal: c.Principal, code: grpcerr.CodeName(code)}, c.Resource
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.tallies[k]
	if t == nil {
		if len(r.tallies) >= maxRefusalTallies {
			k.peer = otherPeers
		}
		if t = r.tallies[k]; t == nil {
			t = &tally{first: c.Time}
			r.tallies[k] = t
		}
	}
	t.calls++
	t.last = c.Time
	t.methods.add(c.Method)
	if what != "" {
		t.what.add(Truncate(what, MaxAuditResource))
	}
}

// run writes the tallies as audit events every interval, and once more when
// ctx ends: call it before the audit writer stops.
func (r *refusals) run(ctx context.Context) {
	tick := time.NewTicker(r.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			r.flush()
			return
		case <-tick.C:
			r.flush()
			r.limiter.Forget(r.now())
			r.denied.Forget(r.now())
		}
	}
}

// flush writes one audit event, and one log line, per tally, and starts
// the next interval.
func (r *refusals) flush() {
	r.mu.Lock()
	tallies := r.tallies
	r.tallies = map[refusalKey]*tally{}
	r.mu.Unlock()
	if len(tallies) == 0 {
		return
	}
	now := r.now()
	events := make([]store.AuditEvent, 0, len(tallies))
	for k, t := range tallies {
		detail := fmt.Sprintf("%d calls refused from %s to %s; methods: %s", t.calls,
			t.first.UTC().Format(time.RFC3339), t.last.UTC().Format(time.RFC3339), t.methods)
		ev := store.AuditEvent{Time: now, Method: RefusalMethod, Code: k.code, PeerAddress: k.peer}
		if k.principal != "" {
			ev.Method, ev.Principal = DeniedMethod, k.principal
			if len(t.what.counts) > 0 {
				detail += "; resources: " + t.what.String()
			}
			r.log.Warn("refused calls beyond the caller's allowance of audit events", "principal", k.principal, "code", k.code, "calls", t.calls)
		} else {
			if len(t.what.counts) > 0 {
				detail += "; principals: " + t.what.String()
			}
			r.log.Warn("calls without valid credentials refused", "peer", k.peer, "code", k.code, "calls", t.calls)
		}
		ev.Detail = detail
		events = append(events, ev)
	}
	if err := r.audit.Record(events...); err != nil {
		r.log.Error("could not write the audit events of refused calls", "events", len(events), "error", err)
	}
}

// names counts up to maxRefusalNames distinct names, and the calls of the others.
type names struct {
	counts map[string]int
	others int
}

func (n *names) add(name string) {
	if _, ok := n.counts[name]; !ok && len(n.counts) >= maxRefusalNames {
		n.others++
		return
	}
	if n.counts == nil {
		n.counts = map[string]int{}
	}
	n.counts[name]++
}

// String is "name count, ..." in name order, then the others' count.
func (n names) String() string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(n.counts)) {
		parts = append(parts, fmt.Sprintf("%s %d", name, n.counts[name]))
	}
	if n.others > 0 {
		parts = append(parts, fmt.Sprintf("others %d", n.others))
	}
	return strings.Join(parts, ", ")
}
