package main

import (
	"bytes"
	"context"
	"fmt"
	"io/ioutil"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	modelreg "modelreg/client"
	"modelreg/client/internal/testserver"
	pb "modelreg/client/modelregv1"
)

// The README shows this file as it is.
func TestTheReadmeShowsThisExampleAsItIs(t *testing.T) {
	readme, err := ioutil.ReadFile(filepath.Join(testserver.Repo(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	begin, end := strings.Index(text, "<!-- go-example:begin -->"), strings.Index(text, "<!-- go-example:end -->")
	if begin < 0 || end < begin {
		t.Fatal("README.md has no Go example between markers")
	}
	blocks := regexp.MustCompile("(?ms)^```go[ \t]*\n(.*?)^```").FindAllStringSubmatch(text[begin:end], -1)
	if len(blocks) != 1 {
		t.Fatalf("%d go blocks between the markers, want 1", len(blocks))
	}
	source, err := ioutil.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	if blocks[0][1] != string(source) {
		t.Fatal("the README's Go example differs from client/go/examples/quickstart/main.go: copy the file into the README")
	}
}

// It registers, gets a second person's approval and prints the replayed log.
func TestQuickstartPrintsTheReplayedLog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	server := testserver.Start(t, testserver.Options{})
	var out bytes.Buffer

	if err := run(ctx, server.Address(), &out); err != nil {
		t.Fatal(err)
	}

	logged, err := server.Client(modelreg.WithActor("carol")).AllEvents(ctx, &pb.ListEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	approver := ""
	for _, e := range logged {
		fmt.Fprintln(&want, e.Sequence, e.Type, e.ToStage)
		if e.Type == pb.EventType_EVENT_TYPE_TRANSITION_APPROVED {
			approver = e.Actor
		}
	}
	if out.String() != want.String() {
		t.Fatalf("printed:\n%s\nwant the log:\n%s", out.String(), want.String())
	}
	if !strings.HasSuffix(out.String(), "EVENT_TYPE_STAGE_CHANGED STAGE_PRODUCTION\n") || approver != "bob" {
		t.Fatalf("the version did not reach production by bob's approval:\n%s", out.String())
	}
}
