package jumpcloudfake

import (
	"testing"
	"time"
)

func TestRenewalsCountsLapsedAndEarlyTokens(t *testing.T) {
	f := &Fake{}
	rn := &f.renewals
	t0 := time.Now().Add(-3 * time.Hour)
	rn.issued("a", t0, time.Hour)
	rn.issued("b", t0, time.Hour)
	rn.issued("a", t0.Add(50*time.Minute), time.Hour)             // on time
	rn.issued("b", t0.Add(10*time.Minute), time.Hour)             // early: most of its life ahead
	rn.issued("a", t0.Add(50*time.Minute+2*time.Hour), time.Hour) // after its token expired
	end := rn.begin()
	rn.begin()()
	end()
	got := f.Renewals()
	want := Renewals{Issued: 5, Clients: 2, Renewed: 3, Lapsed: 1, Early: 1, Expired: 1, PeakInFlight: 2, PeakPerSecond: 2}
	if got != want {
		t.Fatalf("Renewals = %+v, want %+v", got, want)
	}
	f.ResetPeaks()
	if got := f.Renewals(); got.PeakInFlight != 0 || got.PeakPerSecond != 0 || got.Issued != 5 {
		t.Fatalf("after ResetPeaks: %+v, want the peaks at 0 and the counts kept", got)
	}
}
