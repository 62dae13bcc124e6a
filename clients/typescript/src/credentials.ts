/**
 * Channel credentials (plaintext, TLS, mutual TLS) and the bearer token as gRPC call credentials.
 *
 * grpc-js cannot compose call credentials into plaintext channel credentials, so the token goes with each call
 * (`CallOptions.credentials`), which grpc-js sends over any channel. To keep it from travelling in the clear, a
 * plaintext channel to another host with a token is refused unless `allowPlaintextToken` says the network is
 * trusted (e.g. a service mesh that encrypts the traffic between pods).
 */
import { isIP } from "node:net";

import { type CallCredentials, type ChannelCredentials, credentials, Metadata } from "@grpc/grpc-js";

export interface CredentialOptions {
  /** Channel credentials; default plaintext (or TLS when `tls` is true or any PEM option below is given). */
  credentials?: ChannelCredentials;
  tls?: boolean;
  /** PEM CA certificates that sign the server's certificate (default: the system roots); implies TLS. */
  rootCerts?: Uint8Array;
  /** PEM private key and certificate chain of this client, for servers that require mutual TLS; implies TLS. */
  privateKey?: Uint8Array;
  certChain?: Uint8Array;
  /** Sent as `authorization: Bearer <token>` call credentials on every call. */
  token?: string;
  /** Send the token over a plaintext channel to a host other than this machine (trusted networks only). */
  allowPlaintextToken?: boolean;
}

/** TLS credentials from the PEM options (mutual TLS with privateKey + certChain), or plaintext. */
export function channelCredentials(options: CredentialOptions): ChannelCredentials {
  if (options.credentials) return options.credentials;
  const { rootCerts, privateKey, certChain } = options;
  if ((privateKey === undefined) !== (certChain === undefined)) {
    throw new TypeError("mutual TLS needs both privateKey and certChain");
  }
  if (!options.tls && !rootCerts && !privateKey) return credentials.createInsecure();
  const pem = (value?: Uint8Array) => (value === undefined ? null : Buffer.from(value));
  return credentials.createSsl(pem(rootCerts), pem(privateKey), pem(certChain));
}

/** The token as call credentials, after checking it cannot leak over plaintext to another host. */
export function tokenCredentials(
  target: string,
  channel: ChannelCredentials,
  options: CredentialOptions,
): CallCredentials | undefined {
  const { token } = options;
  if (!token) return undefined;
  if (!channel._isSecure() && !isLocalTarget(target) && !options.allowPlaintextToken) {
    throw new Error(
      `refusing to send the token in plaintext to "${target}" (not a loopback address): use TLS (tls: true or ` +
        "rootCerts), or pass allowPlaintextToken: true if the network between client and server is trusted",
    );
  }
  return credentials.createFromMetadataGenerator((_params, callback) => {
    const metadata = new Metadata();
    metadata.set("authorization", `Bearer ${token}`);
    callback(null, metadata);
  });
}

/** Whether the target stays on this machine: a Unix socket, "localhost" or a loopback address. */
export function isLocalTarget(target: string): boolean {
  if (target.startsWith("unix:") || target.startsWith("unix-abstract:")) return true;
  let rest = target;
  const scheme = /^(dns|ipv4|ipv6):/.exec(rest)?.[1];
  if (scheme) {
    rest = rest.slice(scheme.length + 1);
    if (scheme === "dns" && rest.startsWith("//")) rest = rest.slice(2).split("/").slice(1).join("/");
  }
  const addresses = scheme === "ipv4" || scheme === "ipv6" ? rest.split(",") : [rest];
  return addresses.every(isLoopback);
}

function isLoopback(address: string): boolean {
  let host: string;
  if (address.startsWith("[")) host = address.slice(1, address.indexOf("]")); // [::1]:50051
  else if (address.split(":").length === 2) host = address.split(":")[0]; // host:port
  else host = address; // host, or a bare IPv6 address
  if (host.toLowerCase() === "localhost") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  if (isIP(host) === 6) return host === "::1" || /^(0{0,4}:){7}0{0,3}1$/.test(host) || host.startsWith("::ffff:127.");
  return false;
}
