// Package bootstrap renders the Envoy bootstrap that makes Envoy stand in
// for the halo agent on a node: Delta ADS over gRPC to halo-server, the node
// named as halo knows it, listeners and clusters from ADS. It is pure, and
// every bootstrap it returns has passed Envoy's generated validation.
package bootstrap

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	downstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"sigs.k8s.io/yaml"
)

// XDSCluster is the name of the static cluster of halo-servers.
const XDSCluster = "halo_xds"

// DefaultAdminPort is Envoy's admin port (on 127.0.0.1) unless told.
const DefaultAdminPort = 9901

// Params describe one node's bootstrap.
type Params struct {
	// Cluster and Node name the node as halo knows it (node.cluster,
	// node.id). Required.
	Cluster, Node string
	// XDSServers are halo-server addresses (host:port). At least one.
	XDSServers []string
	// AdminPort is Envoy's admin port on 127.0.0.1. Zero: DefaultAdminPort.
	AdminPort uint32
	// CAFile, on the node, verifies halo-server; set, Envoy uses TLS.
	CAFile string
	// CertFile and KeyFile, on the node, are Envoy's client certificate.
	CertFile, KeyFile string
	// MaxConnections caps Envoy's downstream connections (its overload
	// manager warns without a cap). Zero: 50,000.
	MaxConnections int64
}

// Render builds and validates the bootstrap.
func Render(p Params) (*bootstrapv3.Bootstrap, error) {
	if p.Cluster == "" || p.Node == "" {
		return nil, errors.New("bootstrap: cluster and node are required")
	}
	if len(p.XDSServers) == 0 {
		return nil, errors.New("bootstrap: at least one halo-server address is required")
	}
	if (p.CertFile == "") != (p.KeyFile == "") || (p.CertFile != "" && p.CAFile == "") {
		return nil, errors.New("bootstrap: cert_file and key_file go together, and need ca_file")
	}
	if p.AdminPort == 0 {
		p.AdminPort = DefaultAdminPort
	}
	if p.MaxConnections == 0 {
		p.MaxConnections = 50000
	}
	var lbEndpoints []*endpointv3.LbEndpoint
	for _, s := range p.XDSServers {
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: halo-server address %q: %w", s, err)
		}
		pn, err := strconv.ParseUint(port, 10, 16)
		if err != nil || pn == 0 {
			return nil, fmt.Errorf("bootstrap: halo-server address %q: bad port", s)
		}
		lbEndpoints = append(lbEndpoints, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: socket(host, uint32(pn)),
		}}})
	}
	h2, err := anypb.New(&httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
			Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
		}},
	}})
	if err != nil {
		return nil, err
	}
	xds := &clusterv3.Cluster{
		Name: XDSCluster,
		// STRICT_DNS resolves names and takes IPs as they are.
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: XDSCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbEndpoints}}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2},
		UpstreamConnectionOptions:     &clusterv3.UpstreamConnectionOptions{TcpKeepalive: &corev3.TcpKeepalive{}},
	}
	if p.CAFile != "" {
		tc := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: p.CAFile}},
			}},
		}}
		if p.CertFile != "" {
			tc.CommonTlsContext.TlsCertificates = []*tlsv3.TlsCertificate{{
				CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: p.CertFile}},
				PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: p.KeyFile}},
			}}
		}
		tcAny, err := anypb.New(tc)
		if err != nil {
			return nil, err
		}
		xds.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tcAny}}
	}
	limit, err := anypb.New(&downstreamv3.DownstreamConnectionsConfig{MaxActiveDownstreamConnections: p.MaxConnections})
	if err != nil {
		return nil, err
	}
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	b := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: p.Node, Cluster: p.Cluster},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:                   corev3.ApiConfigSource_DELTA_GRPC,
				TransportApiVersion:       corev3.ApiVersion_V3,
				SetNodeOnFirstMessageOnly: true,
				GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSCluster},
				}}},
			},
			LdsConfig: ads,
			CdsConfig: ads,
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{xds}},
		Admin:           &bootstrapv3.Admin{Address: socket("127.0.0.1", p.AdminPort)},
		OverloadManager: &overloadv3.OverloadManager{ResourceMonitors: []*overloadv3.ResourceMonitor{{
			Name:       "envoy.resource_monitors.global_downstream_max_connections",
			ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: limit},
		}}},
	}
	if err := Validate(b); err != nil {
		return nil, err
	}
	return b, nil
}

func socket(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// Validate runs Envoy's generated validation on a bootstrap and on every
// typed config inside it.
func Validate(b *bootstrapv3.Bootstrap) error {
	if err := b.ValidateAll(); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	var errs []error
	check := func(a *anypb.Any) {
		if a == nil {
			return
		}
		m, err := a.UnmarshalNew()
		if err != nil {
			errs = append(errs, fmt.Errorf("bootstrap: typed config %s: %w", a.GetTypeUrl(), err))
			return
		}
		if v, ok := m.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				errs = append(errs, fmt.Errorf("bootstrap: %s: %w", a.GetTypeUrl(), err))
			}
		}
	}
	for _, c := range b.GetStaticResources().GetClusters() {
		for _, a := range c.GetTypedExtensionProtocolOptions() {
			check(a)
		}
		check(c.GetTransportSocket().GetTypedConfig())
	}
	for _, rm := range b.GetOverloadManager().GetResourceMonitors() {
		check(rm.GetTypedConfig())
	}
	return errors.Join(errs...)
}

// JSON encodes a bootstrap as Envoy reads it.
func JSON(b *bootstrapv3.Bootstrap) ([]byte, error) {
	return protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(b)
}

// YAML encodes a bootstrap as YAML.
func YAML(b *bootstrapv3.Bootstrap) ([]byte, error) {
	j, err := protojson.Marshal(b)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(j)
}

// Parse reads a bootstrap from YAML or JSON into Envoy's type, rejecting
// unknown fields, and validates it.
func Parse(data []byte) (*bootstrapv3.Bootstrap, error) {
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(j, b); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	if err := Validate(b); err != nil {
		return nil, err
	}
	return b, nil
}
