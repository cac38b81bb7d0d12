package client_test

import (
	"context"
	"fmt"
	"net/http"

	"golang.org/x/oauth2"

	"github.com/credbroker/credbroker/client"
)

// A service gets an HTTP client whose requests carry the account's token;
// the broker keeps the client secret.
func ExampleClient_TokenSource() {
	d := must(startDemo())
	defer d.stop()

	// A caller key an admin made for this service, granted accounts/acme.
	c := must(client.New(d.target, client.WithCallerKey(d.key))) // e.g. "127.0.0.1:50051"
	defer c.Close()
	httpClient := oauth2.NewClient(context.Background(), c.TokenSource("accounts/acme"))

	req := must(http.NewRequest("GET", d.apiURL+"/v2/systemgroups", nil))
	req.Header.Set("x-org-id", demoOrgID) // oauth2 sets only Authorization; RoundTripper does both
	resp := must(httpClient.Do(req))
	fmt.Println(resp.Status, body(resp))
	// Output: 200 OK GET /api/v2/systemgroups?
}

// RoundTripper adds the token and the account's headers (x-org-id) and
// resolves paths against the account's API base URL.
func ExampleClient_RoundTripper() {
	d := must(startDemo())
	defer d.stop()

	c := must(client.New(d.target, client.WithCallerKey(d.key)))
	defer c.Close()
	jumpcloud := &http.Client{Transport: c.RoundTripper("accounts/acme", nil)}

	resp := must(jumpcloud.Get("/v2/systemgroups?limit=5"))
	fmt.Println(resp.Status, body(resp))
	// Output: 200 OK GET /api/v2/systemgroups?limit=5
}
