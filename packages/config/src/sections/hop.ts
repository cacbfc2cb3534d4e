/**
 * hop: the keys every SMTP hop shares: where it listens, who may connect, where it forwards,
 * and how long it waits for the next hop. Each service section spreads the parts it needs.
 */
import { z } from 'zod';
import { cidr, hostPort, timer } from '../units.js';
import { LOOPBACK } from './common.js';

/** A list of networks allowed to connect: at least one (an empty list is a config error). */
export const peerList = () =>
  z.array(cidr()).min(1, 'must list at least one address; loopback is 127.0.0.1/32').default(LOOPBACK);

/** listen + peers: an internal SMTP port that refuses anyone outside its peers. */
export const internalListener = (listen: string) => ({
  /** Address and port to listen on. */
  listen: hostPort().default(listen),
  /**
   * Who may connect (CIDR); anyone else gets 421 4.7.0 and is disconnected. Never empty: the listener
   * would take an empty list as everyone (XFORWARD included), so it is refused at start.
   */
  peers: peerList(),
});

/** next + timeouts: the client side of a hop (derived from the next service's listen when unset). */
export const nextHop = () => ({
  /** Next hop addresses (all replicas); empty = derived from the next service's listen address. */
  next: z.array(hostPort()).default([]),
  /** TCP connect + greeting to the next hop. */
  nextConnectTimeout: timer('5s'),
  /** Any one reply of the next hop (Postfix: smtpd_proxy_timeout). */
  nextTimeout: timer('100s'),
  /** Idle pooled connections kept per next-hop address. */
  nextPoolIdle: z.number().int().min(0).max(1000).default(32),
});
