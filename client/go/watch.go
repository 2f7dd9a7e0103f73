package modelreg

import (
	"context"
	"io"
	"math/rand"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "modelreg/client/modelregv1"
)

// Watch is a WatchTransitions subscription that resumes by itself.
//
// The server promises an ordered, gap-free, duplicate-free stream that
// resumes exactly after after_sequence, and heartbeats that are bookmarks
// (every matching event up to their sequence was sent). So Watch remembers
// the last sequence it saw, from an event or a heartbeat, and when the stream
// fails with UNAVAILABLE (a restart, a network cut) it reopens it from there.
// It does not filter duplicates, so a server bug stays visible.
type Watch struct {
	client  pb.ModelRegistryServiceClient
	request *pb.WatchTransitionsRequest

	// MaxReconnects bounds the reopenings in a row without a message in
	// between; negative (the default) means forever.
	MaxReconnects int
	// InitialBackoff is the first wait before reopening, doubling up to MaxBackoff.
	InitialBackoff, MaxBackoff time.Duration

	ctx        context.Context
	cancel     context.CancelFunc
	mu         sync.Mutex
	cursor     *uint64
	reconnects int
	failures   int
	stream     pb.ModelRegistryService_WatchTransitionsClient
}

// Watch subscribes to the event log with the filter of req (models, types,
// to_stages). req.AfterSequence says where to start: nil at the current end
// of the log (only new events), proto.Uint64(0) from the beginning, N after
// event N. Call Recv for each message, and Close (or cancel ctx) to stop.
func (c *Client) Watch(ctx context.Context, req *pb.WatchTransitionsRequest) *Watch {
	ctx, cancel := context.WithCancel(ctx)
	w := &Watch{
		client:         c,
		request:        proto.Clone(req).(*pb.WatchTransitionsRequest),
		MaxReconnects:  -1,
		InitialBackoff: 100 * time.Millisecond,
		MaxBackoff:     5 * time.Second,
		ctx:            ctx,
		cancel:         cancel,
	}
	if req.AfterSequence != nil {
		start := req.GetAfterSequence()
		w.cursor = &start
	}
	return w
}

// Cursor is the last sequence seen (an event's or a heartbeat's); ok is false
// only before the first message of a watch from the current end. Store it
// and pass it back as AfterSequence after a process restart.
func (w *Watch) Cursor() (sequence uint64, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cursor == nil {
		return 0, false
	}
	return *w.cursor, true
}

// Reconnects is how many times the stream was reopened.
func (w *Watch) Reconnects() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reconnects
}

// Close ends the subscription; a Recv in progress returns context.Canceled.
func (w *Watch) Close() { w.cancel() }

// Recv returns the next message: an event (item.GetEvent() != nil) or a
// heartbeat. It returns io.EOF when the server ended the stream, ctx's error
// once the watch is closed, and any other failure than UNAVAILABLE (or
// UNAVAILABLE more than MaxReconnects times in a row) as it is.
func (w *Watch) Recv() (*pb.WatchTransitionsResponse, error) {
	for {
		if w.ctx.Err() != nil {
			return nil, w.ctx.Err()
		}
		if w.stream == nil {
			request := proto.Clone(w.request).(*pb.WatchTransitionsRequest)
			if sequence, ok := w.Cursor(); ok {
				request.AfterSequence = proto.Uint64(sequence)
			}
			stream, err := w.client.WatchTransitions(w.ctx, request)
			if err != nil {
				if err := w.retry(err); err != nil {
					return nil, err
				}
				continue
			}
			w.stream = stream
		}
		item, err := w.stream.Recv()
		if err == nil {
			w.failures = 0
			w.advance(item)
			return item, nil
		}
		w.stream = nil
		if err == io.EOF {
			return nil, io.EOF
		}
		if err := w.retry(err); err != nil {
			return nil, err
		}
	}
}

func (w *Watch) advance(item *pb.WatchTransitionsResponse) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var sequence uint64
	switch kind := item.Kind.(type) {
	case *pb.WatchTransitionsResponse_Event:
		sequence = kind.Event.GetSequence()
	case *pb.WatchTransitionsResponse_Heartbeat:
		sequence = kind.Heartbeat.GetSequence()
		// A bookmark never moves the cursor backwards.
		if w.cursor != nil && *w.cursor > sequence {
			return
		}
	default:
		return
	}
	w.cursor = &sequence
}

// retry waits before the next try, or returns the error that ends the watch.
func (w *Watch) retry(err error) error {
	if w.ctx.Err() != nil {
		return w.ctx.Err()
	}
	if status.Code(err) != codes.Unavailable {
		return err
	}
	if w.MaxReconnects >= 0 && w.failures >= w.MaxReconnects {
		return err
	}
	w.failures++
	w.mu.Lock()
	w.reconnects++
	w.mu.Unlock()
	wait := w.InitialBackoff << uint(w.failures-1)
	if wait > w.MaxBackoff || wait <= 0 {
		wait = w.MaxBackoff
	}
	// Jitter spreads the reconnects of many workers after a restart.
	wait = wait/2 + time.Duration(rand.Int63n(int64(wait/2)+1))
	select {
	case <-w.ctx.Done():
		return w.ctx.Err()
	case <-time.After(wait):
		return nil
	}
}
