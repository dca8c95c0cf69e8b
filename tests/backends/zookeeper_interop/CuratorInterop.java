/*
 * The Java side of the ZooKeeper interop test (tests/backends/test_zookeeper_curator_interop.py), using Apache
 * Curator x-discovery exactly as applications do.
 *
 *   register CONNECT BASE_PATH SERVICE ID ADDRESS PORT STATUS PAYLOAD   registers, prints READY, and keeps the
 *                                                                       registration until stdin closes
 *   query    CONNECT BASE_PATH SERVICE PAYLOAD                          prints one JSON line per instance, then DONE
 *
 * PAYLOAD is "spring" (payload class ZookeeperInstance, as Spring Cloud Zookeeper) or "map" (a plain Map payload).
 */
import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.Collection;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.retry.ExponentialBackoffRetry;
import org.apache.curator.x.discovery.ServiceDiscovery;
import org.apache.curator.x.discovery.ServiceDiscoveryBuilder;
import org.apache.curator.x.discovery.ServiceInstance;
import org.apache.curator.x.discovery.details.JsonInstanceSerializer;
import org.springframework.cloud.zookeeper.discovery.ZookeeperInstance;

public final class CuratorInterop {
    private CuratorInterop() {
    }

    public static void main(String[] args) throws Exception {
        String mode = args[0];
        String connect = args[1];
        String basePath = args[2];
        String service = args[3];
        boolean spring = "spring".equals(args[args.length - 1]);
        try (CuratorFramework client = CuratorFrameworkFactory.newClient(connect, 4000, 4000,
                new ExponentialBackoffRetry(100, 3))) {
            client.start();
            client.blockUntilConnected();
            if (spring) {
                run(mode, args, client, basePath, service, ZookeeperInstance.class);
            } else {
                run(mode, args, client, basePath, service, Map.class);
            }
        }
    }

    private static <T> void run(String mode, String[] args, CuratorFramework client, String basePath, String service,
            Class<T> payloadClass) throws Exception {
        ServiceDiscovery<T> discovery = ServiceDiscoveryBuilder.builder(payloadClass)
                .client(client)
                .basePath(basePath)
                .serializer(new JsonInstanceSerializer<>(payloadClass))
                .build();
        discovery.start();
        try {
            if ("register".equals(mode)) {
                register(discovery, args, service, payloadClass);
            } else {
                query(discovery, service);
            }
        } finally {
            discovery.close();
        }
    }

    @SuppressWarnings("unchecked")
    private static <T> void register(ServiceDiscovery<T> discovery, String[] args, String service,
            Class<T> payloadClass) throws Exception {
        String id = args[4];
        Map<String, String> metadata = new HashMap<>();
        metadata.put("instance_status", args[7]);
        metadata.put("team", "java");
        Object payload = payloadClass == ZookeeperInstance.class
                ? new ZookeeperInstance(id, service, metadata)
                : new HashMap<String, Object>(Map.of("metadata", metadata));
        ServiceInstance<T> instance = ServiceInstance.<T>builder()
                .name(service)
                .id(id)
                .address(args[5])
                .port(Integer.parseInt(args[6]))
                .payload((T) payload)
                .build();
        discovery.registerService(instance);
        System.out.println("READY");
        System.out.flush();
        while (System.in.read() != -1) {
            // keep the registration until the test closes our stdin
        }
        discovery.unregisterService(instance);
    }

    private static <T> void query(ServiceDiscovery<T> discovery, String service) throws Exception {
        ObjectMapper mapper = new ObjectMapper();
        Collection<ServiceInstance<T>> instances = discovery.queryForInstances(service);
        for (ServiceInstance<T> instance : instances) {
            Map<String, Object> line = new LinkedHashMap<>();
            line.put("id", instance.getId());
            line.put("name", instance.getName());
            line.put("address", instance.getAddress());
            line.put("port", instance.getPort());
            line.put("serviceType", String.valueOf(instance.getServiceType()));
            Object payload = instance.getPayload();
            if (payload instanceof ZookeeperInstance) {
                line.put("payloadClass", payload.getClass().getName());
                line.put("metadata", ((ZookeeperInstance) payload).getMetadata());
            } else if (payload instanceof Map) {
                line.put("payloadClass", "map");
                line.put("metadata", ((Map<?, ?>) payload).get("metadata"));
            }
            System.out.println(mapper.writeValueAsString(line));
        }
        System.out.println("DONE");
    }
}
