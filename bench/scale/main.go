// Command scale links many accounts to a running broker through its API
// and times what an MSP with one account per customer does most: linking
// them (-link), and listing them a page at a time from a warm client
// (-list); and it reports what the JumpCloud stand-in saw of the broker's
// background renewals (-renewals). bench/scale.sh runs it around restarts
// of the broker.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:15091", "the broker's gRPC address (plaintext, loopback)")
	key := flag.String("admin-key", "", "an admin caller key")
	link := flag.Int("link", 0, "accounts to link (acct-0, acct-1, ...)")
	from := flag.Int("from", 0, "the first account number to link")
	concurrency := flag.Int("concurrency", 64, "calls at once while linking")
	list := flag.Int("list", 0, "pages of 100 to list, each way (all accounts, and those ACCOUNT_STATE_ACTIVE)")
	renewals := flag.String("renewals", "", "the stand-in's address: print what it saw of token renewals and stop")
	flag.Parse()
	if *renewals != "" {
		printRenewals(*renewals)
		return
	}
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+*key)
	accounts := credbrokerv1.NewAccountServiceClient(conn)
	if *link > 0 {
		linkAccounts(ctx, accounts, *from, *link, *concurrency)
	}
	if *list > 0 {
		listPages(ctx, accounts, *list, credbrokerv1.AccountState_ACCOUNT_STATE_UNSPECIFIED)
		listPages(ctx, accounts, *list, credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE)
	}
}

// printRenewals prints the stand-in's jumpcloudfake.Renewals (served at
// addr) as "renewals" and its fields in order.
func printRenewals(addr string) {
	resp, err := http.Get("http://" + addr + jumpcloudfake.RenewalsPath)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	var r jumpcloudfake.Renewals
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		log.Fatal(err)
	}
	fmt.Println("renewals", r.Issued, r.Clients, r.Renewed, r.Lapsed, r.Expired, r.Early, r.PeakInFlight, r.PeakPerSecond)
}

// linkAccounts links n accounts from number from on (acct-N, each its own
// service account client-N), and prints
// "linked N accounts/s".
func linkAccounts(ctx context.Context, accounts credbrokerv1.AccountServiceClient, from, n, concurrency int) {
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	start := time.Now()
	for range concurrency {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(from+n) {
					return
				}
				_, err := accounts.CreateAccount(ctx, &credbrokerv1.CreateAccountRequest{
					AccountId: fmt.Sprintf("acct-%d", i),
					Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
						ClientId: fmt.Sprintf("client-%d", i), ClientSecret: "demo-secret", Region: credbrokerv1.Region_REGION_US,
					}},
				})
				if err != nil {
					log.Fatalf("acct-%d: %v", i, err)
				}
			}
		})
	}
	wg.Wait()
	fmt.Printf("linked %d %.0f\n", n, float64(n)/time.Since(start).Seconds())
}

// listPages lists pages of 100 accounts (in state, if set) one after the
// other, from the first page on and again from the start when the last is
// reached, after a few pages to warm the connection, and prints
// "list STATE p50_ms p99_ms".
func listPages(ctx context.Context, accounts credbrokerv1.AccountServiceClient, pages int, state credbrokerv1.AccountState) {
	var took []time.Duration
	token := ""
	for i := range pages + 10 {
		start := time.Now()
		resp, err := accounts.ListAccounts(ctx, &credbrokerv1.ListAccountsRequest{PageSize: 100, PageToken: token, State: state})
		if err != nil {
			log.Fatal(err)
		}
		if i >= 10 {
			took = append(took, time.Since(start))
		}
		if len(resp.GetAccounts()) == 0 {
			log.Fatalf("an empty page (state %v)", state)
		}
		token = resp.GetNextPageToken()
	}
	slices.Sort(took)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	fmt.Printf("list %s %.2f %.2f\n", state, ms(took[len(took)/2]), ms(took[len(took)*99/100]))
}
