// etcdpeer: a real Go peer for the interop tests, built from Debian's packaged etcd client and grpc-go
// (GOPATH mode, offline: see tests/interop/etcd_go/build.sh). It uses etcd's own naming packages the way
// etcd's documentation shows, and prints one JSON object per line on stdout for the Python test to read.
//
//	etcdpeer serve    -listen 127.0.0.1:0 [-n 2]             gRPC health servers; prints {"serving": "host:port"}
//	etcdpeer register -endpoints E -target T -addr H:P -ttl S  endpoints.Manager.AddEndpoint(T/H:P) with a kept-alive
//	                                                           lease; prints {"registered": key}, then blocks
//	etcdpeer watch    -endpoints E -target T                   endpoints.Manager.NewWatchChannel; prints every update
//	etcdpeer dial     -endpoints E -target T [-every 100ms] [-balancer pick_first|round_robin]
//	                                                           grpc.Dial("etcd:///"+T) with the resolver builder;
//	                                                           prints the peer of every Health.Check
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/naming/endpoints"
	"go.etcd.io/etcd/clientv3/naming/resolver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

func emit(v interface{}) {
	line, err := json.Marshal(v)
	if err != nil {
		fail("marshal: %v", err)
	}
	fmt.Println(string(line))
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "etcdpeer: "+format+"\n", args...)
	os.Exit(1)
}

func connect(list string) *clientv3.Client {
	client, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(list, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		fail("connect %s: %v", list, err)
	}
	return client
}

func serve(args []string) {
	flags := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := flags.String("listen", "127.0.0.1:0", "address to listen on")
	count := flags.Int("n", 1, "how many servers")
	_ = flags.Parse(args)
	for i := 0; i < *count; i++ {
		listener, err := net.Listen("tcp", *listen)
		if err != nil {
			fail("listen: %v", err)
		}
		server := grpc.NewServer()
		healthpb.RegisterHealthServer(server, health.NewServer())
		go func() { _ = server.Serve(listener) }()
		emit(map[string]string{"serving": listener.Addr().String()})
	}
	select {}
}

func register(args []string) {
	flags := flag.NewFlagSet("register", flag.ExitOnError)
	list := flags.String("endpoints", "", "etcd endpoints")
	target := flags.String("target", "", "the etcd naming target")
	addr := flags.String("addr", "", "host:port to register under <target>/<host:port>")
	ttl := flags.Int64("ttl", 2, "lease TTL in seconds")
	_ = flags.Parse(args)
	client := connect(*list)
	manager, err := endpoints.NewManager(client, *target)
	if err != nil {
		fail("manager: %v", err)
	}
	ctx := context.Background()
	lease, err := client.Grant(ctx, *ttl)
	if err != nil {
		fail("grant: %v", err)
	}
	key := *target + "/" + *addr
	if err := manager.AddEndpoint(ctx, key, endpoints.Endpoint{Addr: *addr}, clientv3.WithLease(lease.ID)); err != nil {
		fail("add endpoint: %v", err)
	}
	alive, err := client.KeepAlive(ctx, lease.ID)
	if err != nil {
		fail("keep alive: %v", err)
	}
	emit(map[string]interface{}{"registered": key, "lease": int64(lease.ID)})
	for range alive { // until killed
	}
	fail("keep-alive channel closed")
}

func watch(args []string) {
	flags := flag.NewFlagSet("watch", flag.ExitOnError)
	list := flags.String("endpoints", "", "etcd endpoints")
	target := flags.String("target", "", "the etcd naming target")
	_ = flags.Parse(args)
	client := connect(*list)
	manager, err := endpoints.NewManager(client, *target)
	if err != nil {
		fail("manager: %v", err)
	}
	updates, err := manager.NewWatchChannel(context.Background())
	if err != nil {
		fail("watch: %v", err)
	}
	emit(map[string]bool{"watching": true})
	for batch := range updates {
		for _, update := range batch {
			op := "add"
			if update.Op == endpoints.Delete {
				op = "delete"
			}
			emit(map[string]interface{}{"op": op, "key": update.Key, "addr": update.Endpoint.Addr,
				"metadata": update.Endpoint.Metadata})
		}
	}
	fail("watch channel closed")
}

func dial(args []string) {
	flags := flag.NewFlagSet("dial", flag.ExitOnError)
	list := flags.String("endpoints", "", "etcd endpoints")
	target := flags.String("target", "", "the etcd naming target (with its trailing /)")
	every := flags.Duration("every", 100*time.Millisecond, "pause between calls")
	policy := flags.String("balancer", "pick_first", "gRPC load-balancing policy (pick_first or round_robin)")
	_ = flags.Parse(args)
	client := connect(*list)
	builder, err := resolver.NewBuilder(client)
	if err != nil {
		fail("builder: %v", err)
	}
	dialString := "etcd:///" + *target
	conn, err := grpc.Dial(dialString, grpc.WithResolvers(builder), grpc.WithInsecure(),
		grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingPolicy":%q}`, *policy)))
	if err != nil {
		fail("dial %s: %v", dialString, err)
	}
	emit(map[string]string{"dialing": dialString})
	health := healthpb.NewHealthClient(conn)
	for {
		var from peer.Peer
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&from))
		cancel()
		if err != nil {
			emit(map[string]string{"error": err.Error()})
		} else {
			emit(map[string]string{"peer": from.Addr.String()})
		}
		time.Sleep(*every)
	}
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: etcdpeer serve|register|watch|dial [flags]")
	}
	commands := map[string]func([]string){"serve": serve, "register": register, "watch": watch, "dial": dial}
	command, ok := commands[os.Args[1]]
	if !ok {
		fail("unknown command %q", os.Args[1])
	}
	command(os.Args[2:])
}
