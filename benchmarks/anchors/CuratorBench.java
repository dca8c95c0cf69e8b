/*
 * Apache Curator x-discovery (Debian's Curator 5.4 jars) as a benchmark worker; protocol: benchmarks/procs.py.
 *
 *   write  CONNECT BASE_PATH SERVICE                 REG/DEREG commands timed around registerService/unregisterService
 *   watch  CONNECT BASE_PATH SERVICE                 ServiceCache listener: ADD/DEL lines
 *   lookup CONNECT BASE_PATH SERVICE BATCHES SIZE    ServiceCache.getInstances() + a round-robin pick, timed in
 *                                                    batches: one "BATCH <ns per op>" line per batch, then DONE
 */
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.state.ConnectionState;
import org.apache.curator.retry.ExponentialBackoffRetry;
import org.apache.curator.x.discovery.ServiceCache;
import org.apache.curator.x.discovery.ServiceDiscovery;
import org.apache.curator.x.discovery.ServiceDiscoveryBuilder;
import org.apache.curator.x.discovery.ServiceInstance;
import org.apache.curator.x.discovery.details.JsonInstanceSerializer;
import org.apache.curator.x.discovery.details.ServiceCacheListener;

@SuppressWarnings({"rawtypes", "unchecked"})
public final class CuratorBench {
    private static final Object OUT = new Object();

    private CuratorBench() {
    }

    static void emit(String line) {
        synchronized (OUT) {
            System.out.println(line);
            System.out.flush();
        }
    }

    public static void main(String[] args) throws Exception {
        String mode = args[0];
        try (CuratorFramework client = CuratorFrameworkFactory.newClient(args[1], 3000, 5000,
                new ExponentialBackoffRetry(100, 3))) {
            client.start();
            client.blockUntilConnected();
            ServiceDiscovery<Map> discovery = ServiceDiscoveryBuilder.builder(Map.class)
                    .client(client)
                    .basePath(args[2])
                    .serializer(new JsonInstanceSerializer<>(Map.class))
                    .build();
            discovery.start();
            try {
                if ("write".equals(mode)) {
                    write(discovery, args[3]);
                } else if ("watch".equals(mode)) {
                    watch(discovery, args[3]);
                } else {
                    lookup(discovery, args[3], Integer.parseInt(args[4]), Integer.parseInt(args[5]));
                }
            } finally {
                discovery.close();
            }
        } catch (Exception e) {
            emit("ERROR " + e.getClass().getSimpleName() + " " + String.valueOf(e.getMessage()).replace('\n', ' '));
            throw e;
        }
    }

    static void write(ServiceDiscovery<Map> discovery, String service) throws Exception {
        Map<String, ServiceInstance<Map>> registered = new HashMap<>();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        emit("READY");
        String line;
        while ((line = in.readLine()) != null) {
            String[] parts = line.trim().split(" ");
            long t0 = System.nanoTime();
            if ("REG".equals(parts[0])) {
                ServiceInstance<Map> instance = ServiceInstance.<Map>builder()
                        .name(service).id(parts[1]).address("127.0.0.1").port(8080)
                        .payload(new HashMap<String, Object>()).build();
                discovery.registerService(instance);
                registered.put(parts[1], instance);
            } else if ("DEREG".equals(parts[0])) {
                discovery.unregisterService(registered.remove(parts[1]));
            } else {
                emit("ERROR unknown-command " + parts[0]);
                continue;
            }
            emit("OK " + parts[1] + " " + t0 + " " + System.nanoTime());
        }
    }

    static Set<String> ids(ServiceCache<Map> cache) {
        Set<String> out = new HashSet<>();
        for (ServiceInstance<Map> instance : cache.getInstances()) {
            out.add(instance.getId());
        }
        return out;
    }

    static void watch(ServiceDiscovery<Map> discovery, String service) throws Exception {
        ServiceCache<Map> cache = discovery.serviceCacheBuilder().name(service).build();
        Set<String> seen = new HashSet<>();
        cache.addListener(new ServiceCacheListener() {
            @Override
            public void cacheChanged() {
                long now = System.nanoTime();
                synchronized (seen) {
                    Set<String> current = ids(cache);
                    for (String id : current) {
                        if (!seen.contains(id)) {
                            emit("ADD " + id + " " + now);
                        }
                    }
                    for (String id : seen) {
                        if (!current.contains(id)) {
                            emit("DEL " + id + " " + now);
                        }
                    }
                    seen.clear();
                    seen.addAll(current);
                }
            }

            @Override
            public void stateChanged(CuratorFramework client, ConnectionState newState) {
            }
        });
        cache.start();
        synchronized (seen) {
            seen.addAll(ids(cache));
        }
        emit("READY");
        while (System.in.read() != -1) {
            // run until the runner closes our stdin
        }
        cache.close();
    }

    static void lookup(ServiceDiscovery<Map> discovery, String service, int batches, int size) throws Exception {
        ServiceCache<Map> cache = discovery.serviceCacheBuilder().name(service).build();
        cache.start();
        long deadline = System.nanoTime() + 30_000_000_000L;
        while (cache.getInstances().isEmpty() && System.nanoTime() < deadline) {
            Thread.sleep(10);
        }
        long counter = 0;
        long sink = 0;
        for (int b = 0; b < batches; b++) {
            long t0 = System.nanoTime();
            for (int i = 0; i < size; i++) {
                List<ServiceInstance<Map>> instances = cache.getInstances();
                ServiceInstance<Map> picked = instances.get((int) (counter++ % instances.size()));
                sink += picked.getPort();
            }
            emit("BATCH " + ((System.nanoTime() - t0) / (double) size));
        }
        emit("DONE " + sink);
        cache.close();
    }
}
