//! The first flight of a TLS connection, read without terminating TLS: is it
//! a ClientHello at all (mixed plaintext/TLS ports), and which server name and
//! ALPN protocols does it offer (passthrough routing by SNI).
//!
//! [`peek`] is pure and never panics: it reads the bytes received so far and
//! says [`Peek::Incomplete`] only while they are a valid prefix of a
//! ClientHello. The handshake message may be split across several handshake
//! records (clients with large post-quantum key shares, or ones that fragment
//! on purpose to dodge middleboxes); the records are walked in place, so
//! nothing is copied unless the server name or the ALPN list itself straddles
//! a record boundary.
//!
//! Encrypted Client Hello: the server name read is the outer (public) one,
//! which is what a passthrough proxy routes on.

use std::borrow::Cow;
use std::fmt;

/// Largest ClientHello accepted, in bytes of handshake message (4-byte
/// handshake header included); beyond it [`peek`] says
/// `NotTls("client hello too large")`.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024 + 4;

/// Most bytes [`peek`] ever needs: once a caller holds this many bytes, it
/// gets [`Peek::Hello`] or [`Peek::NotTls`], never [`Peek::Incomplete`]
/// (records of a ClientHello fragmented beyond this are refused with
/// `NotTls("client hello too fragmented")`).
pub const MAX_PEEK: usize = 24 * 1024;

/// Largest record payload accepted: 2^14 plus the slack TLS allows for
/// ciphertext, more than any plaintext handshake record may hold.
const MAX_RECORD: usize = 16 * 1024 + 2048;
const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const NAME_TYPE_HOST_NAME: u8 = 0;
const MAX_SERVER_NAME: usize = 255;

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Peek<'a> {
    /// More bytes are needed to decide.
    Incomplete,
    /// Not a TLS handshake (first record is not a handshake record / not a
    /// ClientHello / malformed), with a short reason for logs.
    NotTls(&'static str),
    /// A complete ClientHello.
    Hello(ClientHello<'a>),
}

/// What routing needs from a complete ClientHello.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// The server_name extension's host_name, if present, as sent (the caller
    /// lowercases). Always 1..=255 bytes of printable ASCII (no NUL, control
    /// character or space). Borrowed from the input unless the name straddles
    /// two records.
    pub server_name: Option<Cow<'a, str>>,
    /// ALPN protocol names offered, in order (empty without the extension).
    pub alpn: Alpn<'a>,
    /// Total bytes of the record(s) holding the ClientHello, headers included.
    pub len: usize,
}

/// The ALPN protocol names a ClientHello offers: the extension's validated
/// ProtocolNameList (every name non-empty), borrowed from the input unless
/// the list straddles two records.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Alpn<'a>(Cow<'a, [u8]>);

impl Alpn<'_> {
    /// The names, in the client's order of preference.
    pub fn iter(&self) -> AlpnIter<'_> {
        AlpnIter { rest: &self.0 }
    }

    /// Whether no name is offered (no ALPN extension).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many names are offered.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether `protocol` (e.g. `b"h2"`) is offered.
    pub fn contains(&self, protocol: &[u8]) -> bool {
        self.iter().any(|name| name == protocol)
    }
}

impl fmt::Debug for Alpn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(String::from_utf8_lossy)).finish()
    }
}

impl<'b> IntoIterator for &'b Alpn<'_> {
    type Item = &'b [u8];
    type IntoIter = AlpnIter<'b>;

    fn into_iter(self) -> AlpnIter<'b> {
        self.iter()
    }
}

/// Iterator over [`Alpn`] names.
#[derive(Clone, Debug)]
pub struct AlpnIter<'b> {
    rest: &'b [u8],
}

impl<'b> Iterator for AlpnIter<'b> {
    type Item = &'b [u8];

    fn next(&mut self) -> Option<&'b [u8]> {
        let (&len, rest) = self.rest.split_first()?;
        let Some((name, rest)) = rest.split_at_checked(usize::from(len)) else {
            // Not reachable: the list was validated when parsed.
            self.rest = &[];
            return None;
        };
        self.rest = rest;
        Some(name)
    }
}

/// Reads the first flight of a connection: a complete ClientHello, a valid
/// prefix of one, or not TLS.
pub fn peek(bytes: &[u8]) -> Peek<'_> {
    match parse(bytes) {
        Ok(hello) => Peek::Hello(hello),
        Err(Stop::Short) => Peek::Incomplete,
        Err(Stop::Bad(reason)) => Peek::NotTls(reason),
    }
}

/// Why parsing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The input ends inside a valid prefix.
    Short,
    /// Definitely not a (well-formed) ClientHello.
    Bad(&'static str),
}

type Result<T> = std::result::Result<T, Stop>;

fn parse(input: &[u8]) -> Result<ClientHello<'_>> {
    let mut c = Cursor::new(input)?;

    // Handshake header: type and 24-bit length.
    if c.u8(MAX_CLIENT_HELLO, "not a client hello")? != HANDSHAKE_CLIENT_HELLO {
        return Err(Stop::Bad("not a client hello"));
    }
    let body = c.length(3, MAX_CLIENT_HELLO, "client hello too large")?;
    let end = c.set_message_len(body)?;

    // legacy_version: 3.0 (SSL 3) to 3.4.
    if c.u8(end, "truncated client hello")? != 3 || c.u8(end, "truncated client hello")? > 4 {
        return Err(Stop::Bad("bad client version"));
    }
    c.skip(32, end, "truncated client hello")?; // random
    let session_id = c.length(1, end, "truncated client hello")?;
    if session_id > 32 {
        return Err(Stop::Bad("session id too long"));
    }
    c.skip(session_id, end, "truncated client hello")?;
    let cipher_suites = c.length(2, end, "bad cipher suites")?;
    if cipher_suites < 2 || !cipher_suites.is_multiple_of(2) {
        return Err(Stop::Bad("bad cipher suites"));
    }
    c.skip(cipher_suites, end, "bad cipher suites")?;
    let compression = c.length(1, end, "bad compression methods")?;
    if compression == 0 {
        return Err(Stop::Bad("bad compression methods"));
    }
    c.skip(compression, end, "bad compression methods")?;

    let mut server_name = None;
    let mut alpn = None;
    // Extensions are optional (before TLS 1.3); when there, they fill the rest.
    if c.off < end {
        let extensions = c.length(2, end, "bad extensions length")?;
        if c.off.checked_add(extensions) != Some(end) {
            return Err(Stop::Bad("bad extensions length"));
        }
        while c.off < end {
            let kind = c.u16(end, "truncated extension")?;
            let len = c.length(2, end, "truncated extension")?;
            let data_end = c.off.saturating_add(len);
            match kind {
                EXT_SERVER_NAME if server_name.is_some() => return Err(Stop::Bad("duplicate extension")),
                EXT_SERVER_NAME => server_name = Some(parse_server_name(&mut c, data_end)?),
                EXT_ALPN if alpn.is_some() => return Err(Stop::Bad("duplicate extension")),
                EXT_ALPN => alpn = Some(parse_alpn(&mut c, data_end)?),
                _ => c.skip(len, data_end, "truncated extension")?,
            }
            if c.off != data_end {
                return Err(Stop::Bad("bad extension length"));
            }
        }
    }

    let len = c.finish()?;
    Ok(ClientHello { server_name: server_name.flatten(), alpn: alpn.unwrap_or_default(), len })
}

/// The server_name extension (RFC 6066): a non-empty list of names, at most
/// one host_name. Other name types are skipped as opaque<1..2^16-1>.
fn parse_server_name<'a>(c: &mut Cursor<'a>, end: usize) -> Result<Option<Cow<'a, str>>> {
    const BAD: &str = "bad server name extension";
    let list = c.length(2, end, BAD)?;
    if list == 0 || c.off.checked_add(list) != Some(end) {
        return Err(Stop::Bad(BAD));
    }
    let mut host_name = None;
    while c.off < end {
        let name_type = c.u8(end, BAD)?;
        let len = c.length(2, end, BAD)?;
        if name_type != NAME_TYPE_HOST_NAME {
            c.skip(len, end, BAD)?;
            continue;
        }
        if host_name.is_some() {
            return Err(Stop::Bad("duplicate server name"));
        }
        if len == 0 || len > MAX_SERVER_NAME {
            return Err(Stop::Bad("bad server name"));
        }
        let name = c.bytes(len, end, "bad server name", |b| b.is_ascii_graphic())?;
        host_name = Some(match name {
            Cow::Borrowed(name) => Cow::Borrowed(std::str::from_utf8(name).map_err(|_| Stop::Bad("bad server name"))?),
            Cow::Owned(name) => Cow::Owned(String::from_utf8(name).map_err(|_| Stop::Bad("bad server name"))?),
        });
    }
    Ok(host_name)
}

/// The ALPN extension (RFC 7301): a non-empty list of non-empty names.
fn parse_alpn<'a>(c: &mut Cursor<'a>, end: usize) -> Result<Alpn<'a>> {
    const BAD: &str = "bad alpn extension";
    let list = c.length(2, end, BAD)?;
    if list < 2 || c.off.checked_add(list) != Some(end) {
        return Err(Stop::Bad(BAD));
    }
    let mut raw = *c;
    while c.off < end {
        let len = c.length(1, end, BAD)?;
        if len == 0 {
            return Err(Stop::Bad("empty alpn protocol"));
        }
        c.skip(len, end, BAD)?;
    }
    // Validated and all present: take the list itself.
    Ok(Alpn(raw.bytes(list, end, BAD, |_| true)?))
}

/// Checks the record header at `at` and returns its payload length.
/// Each byte is judged as soon as it is there.
fn record_header(input: &[u8], at: usize, not_handshake: &'static str) -> Result<usize> {
    let byte = |i: usize| input.get(at.saturating_add(i)).copied().ok_or(Stop::Short);
    if byte(0)? != CONTENT_HANDSHAKE {
        return Err(Stop::Bad(not_handshake));
    }
    if byte(1)? != 3 || byte(2)? > 4 {
        return Err(Stop::Bad("bad record version"));
    }
    if usize::from(byte(3)?) > MAX_RECORD >> 8 {
        return Err(Stop::Bad("record too large"));
    }
    let len = usize::from(u16::from_be_bytes([byte(3)?, byte(4)?]));
    if len == 0 {
        return Err(Stop::Bad("empty record"));
    }
    if len > MAX_RECORD {
        return Err(Stop::Bad("record too large"));
    }
    Ok(len)
}

/// Reads the handshake message across the handshake records that carry it.
///
/// Positions are logical (`off`, in the message) and physical (`at`, in the
/// input); records are entered lazily, when a byte past the current one is
/// needed. Every read takes the logical end of the enclosing structure and
/// fails with `Bad` past it, or with `Short` past the input.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    input: &'a [u8],
    /// Next byte to read in `input` (a record header when `at == record_end`).
    at: usize,
    /// End of the current record's payload in `input`.
    record_end: usize,
    /// Next byte to read in the message.
    off: usize,
    /// Length of the message: `MAX_CLIENT_HELLO` until its header is read.
    msg_len: usize,
}

impl<'a> Cursor<'a> {
    fn new(input: &'a [u8]) -> Result<Self> {
        let mut c = Cursor { input, at: 0, record_end: 0, off: 0, msg_len: MAX_CLIENT_HELLO };
        c.open_record("not a handshake record")?;
        Ok(c)
    }

    /// Enters the record whose header is at `at`.
    fn open_record(&mut self, not_handshake: &'static str) -> Result<()> {
        // A record holds at least one byte.
        if self.at.saturating_add(RECORD_HEADER + 1) > MAX_PEEK {
            return Err(Stop::Bad("client hello too fragmented"));
        }
        let len = record_header(self.input, self.at, not_handshake)?;
        self.at = self.at.saturating_add(RECORD_HEADER);
        self.record_end = self.at.saturating_add(len);
        self.check_record()?;
        if self.record_end > MAX_PEEK {
            return Err(Stop::Bad("client hello too fragmented"));
        }
        Ok(())
    }

    /// The current record must not hold more than the rest of the message.
    fn check_record(&self) -> Result<()> {
        if self.record_end.saturating_sub(self.at) > self.msg_len.saturating_sub(self.off) {
            return Err(Stop::Bad(if self.msg_len == MAX_CLIENT_HELLO {
                "client hello too large"
            } else {
                "data after client hello"
            }));
        }
        Ok(())
    }

    /// Sets the message length from the handshake header (body bytes) and
    /// returns the message's logical end.
    fn set_message_len(&mut self, body: usize) -> Result<usize> {
        self.msg_len = body.saturating_add(self.off).min(MAX_CLIENT_HELLO);
        self.check_record()?;
        Ok(self.msg_len)
    }

    /// Fails with `Bad(what)` unless `n` more bytes fit before `end`.
    fn room(&self, n: usize, end: usize, what: &'static str) -> Result<()> {
        if n > end.min(self.msg_len).saturating_sub(self.off) {
            return Err(Stop::Bad(what));
        }
        Ok(())
    }

    /// Makes `at` a payload byte, entering the next record if need be.
    fn enter(&mut self) -> Result<()> {
        if self.at >= self.record_end {
            self.open_record("interleaved non-handshake record")?;
        }
        Ok(())
    }

    /// The next byte; bounds already checked by the caller.
    fn byte(&mut self) -> Result<u8> {
        self.enter()?;
        let b = self.input.get(self.at).copied().ok_or(Stop::Short)?;
        self.at = self.at.saturating_add(1);
        self.off = self.off.saturating_add(1);
        Ok(b)
    }

    fn u8(&mut self, end: usize, what: &'static str) -> Result<u8> {
        self.room(1, end, what)?;
        self.byte()
    }

    fn u16(&mut self, end: usize, what: &'static str) -> Result<u16> {
        self.room(2, end, what)?;
        Ok(u16::from_be_bytes([self.byte()?, self.byte()?]))
    }

    /// A big-endian length of `width` (1..=3) bytes, which must leave room
    /// for that many bytes before `end`. Judged byte by byte, so that a
    /// length already too large says `Bad` before its last byte arrives.
    fn length(&mut self, width: usize, end: usize, what: &'static str) -> Result<usize> {
        self.room(width, end, what)?;
        let room = end.min(self.msg_len).saturating_sub(self.off.saturating_add(width));
        let mut value = 0usize;
        for left in (0..width).rev() {
            value = (value << 8) | usize::from(self.byte()?);
            if value << (8 * left) > room {
                return Err(Stop::Bad(what));
            }
        }
        Ok(value)
    }

    /// Skips `n` opaque bytes.
    fn skip(&mut self, n: usize, end: usize, what: &'static str) -> Result<()> {
        self.room(n, end, what)?;
        let mut n = n;
        while n > 0 {
            self.enter()?;
            let available = self.record_end.min(self.input.len()).saturating_sub(self.at);
            if available == 0 {
                return Err(Stop::Short);
            }
            let step = n.min(available);
            self.at = self.at.saturating_add(step);
            self.off = self.off.saturating_add(step);
            n -= step;
        }
        Ok(())
    }

    /// `n` bytes, each of which must pass `ok`: borrowed from the input when
    /// in one record, else copied.
    fn bytes(&mut self, n: usize, end: usize, what: &'static str, ok: impl Fn(u8) -> bool) -> Result<Cow<'a, [u8]>> {
        self.room(n, end, what)?;
        let mut copy = *self;
        let mut start = None;
        for _ in 0..n {
            self.enter()?;
            start.get_or_insert(self.at);
            if !ok(self.byte()?) {
                return Err(Stop::Bad(what));
            }
        }
        let Some(start) = start else { return Ok(Cow::Borrowed(&[])) };
        if self.at.checked_sub(start) == Some(n) {
            return self.input.get(start..self.at).map(Cow::Borrowed).ok_or(Stop::Bad(what));
        }
        let mut owned = Vec::with_capacity(n);
        for _ in 0..n {
            owned.push(copy.byte()?);
        }
        Ok(Cow::Owned(owned))
    }

    /// The end of the message: returns the bytes of the records holding it.
    fn finish(&self) -> Result<usize> {
        if self.off != self.msg_len || self.at != self.record_end {
            return Err(Stop::Bad("data after client hello"));
        }
        Ok(self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// `openssl s_client -servername a.example.com -alpn h2,http/1.1`
    /// (OpenSSL 3.0.19), as received on the socket.
    const OPENSSL_SNI_ALPN: &str = "160301014c010001480303faf93077cb30b6e2b3a7c3ed62273f91a5ef6591d6b320036854be4ea2a8\
d90120490bfffe8546666771e0b7fd0bb8623025018c814f2d96372d528d996a3a3c22003e130213031301c02cc030009fcca9cca8ccaac02b\
c02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff010000c100000012001000000d612e\
6578616d706c652e636f6d000b000403000102000a00160014001d0017001e0019001801000101010201030104002300000010000e000c0268\
3208687474702f312e310016000000170000000d002a0028040305030603080708080809080a080b08040805080604010501060103030301\
0302040205020602002b0009080304030303020301002d00020101003300260024001d0020dd6b3af12ef9c53d3d4e6481a83d29f1f3e97e03\
25aa360c628da703bc7b0120";

    /// `openssl s_client -noservername` (no SNI, no ALPN).
    const OPENSSL_NO_SNI: &str = "1603010124010001200303403e64e2efe10376b3210ac1549980c92cc3b48a4820db577c5d16b05966d3\
8a2083e8793058a5c25423c197ab72ee2ba1c1a4e3903c8dff54ff5a523ce5fa4dd9003e130213031301c02cc030009fcca9cca8ccaac02bc0\
2f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff01000099000b00040300010200\
0a00160014001d0017001e0019001801000101010201030104002300000016000000170000000d002a0028040305030603080708080809080a\
080b080408050806040105010601030303010302040205020602002b0009080304030303020301002d00020101003300260024001d00209444\
7fcd55ba9b70d996fd5f71b45f54e2bd5b6bf79fa586c4d9a93eff831563";

    fn unhex(hex: &str) -> Vec<u8> {
        assert!(hex.len().is_multiple_of(2));
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    fn complete(bytes: &[u8]) -> ClientHello<'_> {
        match peek(bytes) {
            Peek::Hello(hello) => hello,
            other => panic!("expected a ClientHello, got {other:?}"),
        }
    }

    fn names(alpn: &Alpn<'_>) -> Vec<Vec<u8>> {
        alpn.iter().map(<[u8]>::to_vec).collect()
    }

    /// The handshake message of a single-record ClientHello.
    fn message(record: &[u8]) -> &[u8] {
        &record[RECORD_HEADER..]
    }

    /// Re-frames a handshake message into records of the given payload sizes
    /// (the last one takes the rest).
    fn reframe(message: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = message;
        let mut sizes = sizes.iter();
        while !rest.is_empty() {
            let n = sizes.next().map_or(rest.len(), |&n| n.min(rest.len()));
            let (chunk, tail) = rest.split_at(n);
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            out.extend_from_slice(chunk);
            rest = tail;
        }
        out
    }

    /// A ClientHello written by rustls (aws-lc-rs, X25519MLKEM768 key share:
    /// ~1.3 KB), as it goes on the wire.
    fn rustls_hello(server_name: &str, alpn: &[&[u8]], enable_sni: bool, max_fragment: Option<usize>) -> Vec<u8> {
        use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
        // Post-quantum first, as browsers do: its key share makes the hello large.
        let provider = Arc::new(rustls::crypto::CryptoProvider {
            kx_groups: vec![kx_group::X25519MLKEM768, kx_group::X25519],
            ..default_provider()
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.enable_sni = enable_sni;
        config.max_fragment_size = max_fragment;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn openssl_with_sni_and_alpn() {
        let bytes = unhex(OPENSSL_SNI_ALPN);
        let hello = complete(&bytes);
        assert_eq!(hello.server_name.as_deref(), Some("a.example.com"));
        assert!(matches!(hello.server_name, Some(Cow::Borrowed(_))));
        assert_eq!(names(&hello.alpn), [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(hello.alpn.contains(b"h2") && !hello.alpn.contains(b"h3"));
        assert_eq!(hello.alpn.len(), 2);
        assert_eq!(format!("{:?}", hello.alpn), r#"["h2", "http/1.1"]"#);
        assert_eq!(hello.len, bytes.len());
    }

    #[test]
    fn openssl_without_sni() {
        let bytes = unhex(OPENSSL_NO_SNI);
        let hello = complete(&bytes);
        assert_eq!(hello.server_name, None);
        assert!(hello.alpn.is_empty());
        assert_eq!(hello.alpn.len(), 0);
        assert_eq!(hello.len, bytes.len());
    }

    #[test]
    fn len_excludes_what_follows() {
        let mut bytes = unhex(OPENSSL_SNI_ALPN);
        let len = bytes.len();
        // A TLS 1.3 middlebox-compat ChangeCipherSpec, then early data.
        bytes.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01, 0x17, 0x03, 0x03]);
        assert_eq!(complete(&bytes).len, len);
    }

    #[test]
    fn split_across_two_records() {
        let bytes = unhex(OPENSSL_SNI_ALPN);
        let single = complete(&bytes);
        let msg = message(&bytes);
        for at in 1..msg.len() {
            let split = reframe(msg, &[at]);
            let hello = complete(&split);
            assert_eq!(hello.server_name, single.server_name, "split at {at}");
            assert_eq!(hello.alpn, single.alpn, "split at {at}");
            assert_eq!(hello.len, bytes.len() + RECORD_HEADER);
        }
        // Split inside the host_name: the name is copied.
        let name_at = msg.windows(13).position(|w| w == b"a.example.com").unwrap();
        let split = reframe(msg, &[name_at + 4]);
        assert!(matches!(complete(&split).server_name, Some(Cow::Owned(ref name)) if name == "a.example.com"));
    }

    #[test]
    fn split_into_tiny_records() {
        let bytes = unhex(OPENSSL_SNI_ALPN);
        let msg = message(&bytes);
        for size in [1, 2, 3, 7, 64] {
            let split = reframe(msg, &vec![size; msg.len()]);
            let hello = complete(&split);
            assert_eq!(hello.server_name.as_deref(), Some("a.example.com"));
            assert_eq!(names(&hello.alpn), [b"h2".to_vec(), b"http/1.1".to_vec()]);
            assert_eq!(hello.len, split.len());
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for fixture in [unhex(OPENSSL_SNI_ALPN), reframe(message(&unhex(OPENSSL_SNI_ALPN)), &[100, 1, 50])] {
            for n in 0..fixture.len() {
                assert_eq!(peek(&fixture[..n]), Peek::Incomplete, "prefix of {n} bytes");
            }
            assert!(matches!(peek(&fixture), Peek::Hello(_)));
        }
    }

    #[test]
    fn rustls_hellos() {
        let bytes = rustls_hello("Backend.Example.COM", &[b"h2", b"http/1.1"], true, None);
        let hello = complete(&bytes);
        assert_eq!(hello.server_name.as_deref(), Some("Backend.Example.COM"));
        assert_eq!(names(&hello.alpn), [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(hello.len, bytes.len());
        assert!(bytes.len() > 1000, "post-quantum key share expected, got {} bytes", bytes.len());

        let bytes = rustls_hello("backend.example.com", &[], false, None);
        let hello = complete(&bytes);
        assert_eq!((hello.server_name, hello.alpn.is_empty(), hello.len), (None, true, bytes.len()));

        // An IP address: rustls sends no SNI.
        let bytes = rustls_hello("192.0.2.1", &[b"mqtt"], true, None);
        let hello = complete(&bytes);
        assert_eq!(hello.server_name, None);
        assert_eq!(names(&hello.alpn), [b"mqtt".to_vec()]);
    }

    #[test]
    fn rustls_fragmented_hello() {
        // rustls splits the handshake message itself into records this small.
        let bytes = rustls_hello("fragmented.example.com", &[b"h2"], true, Some(64));
        let records = {
            let (mut at, mut n) = (0, 0);
            while at < bytes.len() {
                at += RECORD_HEADER + usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
                n += 1;
            }
            n
        };
        assert!(records > 10, "{records} records");
        let hello = complete(&bytes);
        assert_eq!(hello.server_name.as_deref(), Some("fragmented.example.com"));
        assert_eq!(names(&hello.alpn), [b"h2".to_vec()]);
        assert_eq!(hello.len, bytes.len());
        for n in 0..bytes.len() {
            assert_eq!(peek(&bytes[..n]), Peek::Incomplete, "prefix of {n} bytes");
        }
    }

    #[test]
    fn other_protocols_are_refused_from_the_first_byte() {
        let cases: [&[u8]; 8] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"G",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            // MQTT 3.1.1 CONNECT.
            &[0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00],
            &[0x10],
            // SSL 2 compatible ClientHello.
            &[0x80, 0x2e, 0x01, 0x03, 0x01],
            // A TLS alert record, an application data record.
            &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28],
            &[0x17, 0x03, 0x03],
        ];
        for bytes in cases {
            assert!(matches!(peek(bytes), Peek::NotTls(_)), "{bytes:?}: {:?}", peek(bytes));
        }
        assert_eq!(peek(b"GET "), Peek::NotTls("not a handshake record"));
        assert_eq!(peek(&[]), Peek::Incomplete);
    }

    #[test]
    fn malformed_headers() {
        let cases: [(&[u8], &str); 9] = [
            (&[0x16, 0x02], "bad record version"),
            (&[0x16, 0x03, 0x05], "bad record version"),
            (&[0x16, 0x03, 0x01, 0x00, 0x00], "empty record"),
            (&[0x16, 0x03, 0x01, 0x49], "record too large"),
            (&[0x16, 0x03, 0x01, 0x48, 0x01], "record too large"),
            (&[0x16, 0x03, 0x01, 0x45, 0x00], "client hello too large"),
            (&[0x16, 0x03, 0x01, 0x00, 0x10, 0x02], "not a client hello"),
            (&[0x16, 0x03, 0x01, 0x00, 0x10, 0x01, 0x01], "client hello too large"),
            (&[0x16, 0x03, 0x01, 0x00, 0x10, 0x01, 0x00, 0x00, 0x08], "data after client hello"),
        ];
        for (bytes, reason) in cases {
            assert_eq!(peek(bytes), Peek::NotTls(reason), "{bytes:x?}");
        }
        // Fits: a 16-byte body in a record of 20.
        assert_eq!(peek(&[0x16, 0x03, 0x01, 0x00, 0x14, 0x01, 0x00, 0x00, 0x10]), Peek::Incomplete);
    }

    /// The ClientHello of `OPENSSL_SNI_ALPN` with its body edited, lengths
    /// of the record and handshake headers fixed up.
    fn edited(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let bytes = unhex(OPENSSL_SNI_ALPN);
        let mut body = bytes[9..].to_vec();
        edit(&mut body);
        let len = u32::try_from(body.len()).unwrap();
        let mut msg = vec![1];
        msg.extend_from_slice(&len.to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        reframe(&msg, &[])
    }

    /// Offset in the body of `needle`.
    fn find(body: &[u8], needle: &[u8]) -> usize {
        body.windows(needle.len()).position(|w| w == needle).unwrap()
    }

    #[test]
    fn malformed_bodies() {
        let sid = 2 + 32;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (edited(|b| b[0] = 2), "bad client version"),
            (edited(|b| b[1] = 5), "bad client version"),
            (edited(|b| b[sid] = 33), "session id too long"),
            (edited(|b| b.truncate(sid + 1 + 32 + 1)), "bad cipher suites"),
            (edited(|b| b[sid + 1 + 32 + 1] = 0x3f), "bad cipher suites"),
            (edited(|b| b[sid + 1 + 32..sid + 1 + 32 + 2].copy_from_slice(&[0, 0])), "bad cipher suites"),
            (edited(|b| b.push(0)), "bad extensions length"),
            (
                edited(|b| {
                    let at = find(b, &[0x00, 0x17, 0x00, 0x00]);
                    b[at + 3] = 1;
                }),
                "truncated extension",
            ),
            (
                edited(|b| {
                    let at = find(b, b"a.example.com");
                    b[at + 1] = b' ';
                }),
                "bad server name",
            ),
            (
                edited(|b| {
                    let at = find(b, b"a.example.com");
                    b[at + 1] = 0;
                }),
                "bad server name",
            ),
            (
                edited(|b| {
                    let at = find(b, b"a.example.com");
                    b[at] = 0xc3;
                }),
                "bad server name",
            ),
            (
                edited(|b| {
                    let at = find(b, &[0x00, 0x10, 0x00, 0x0e, 0x00, 0x0c, 0x02]);
                    b[at + 6] = 0;
                }),
                "empty alpn protocol",
            ),
            (
                edited(|b| {
                    let at = find(b, &[0x00, 0x10, 0x00, 0x0e, 0x00, 0x0c]);
                    b[at + 5] = 0x0b;
                }),
                "bad alpn extension",
            ),
            (
                edited(|b| {
                    // A second server_name extension, appended.
                    let at = find(b, &[0x00, 0x00, 0x00, 0x12]);
                    let ext = b[at..at + 4 + 0x12].to_vec();
                    b.extend_from_slice(&ext);
                    let ext_len = sid + 1 + 32 + 2 + 0x3e + 2;
                    let n = u16::from_be_bytes([b[ext_len], b[ext_len + 1]]) + 4 + 0x12;
                    b[ext_len..ext_len + 2].copy_from_slice(&n.to_be_bytes());
                }),
                "duplicate extension",
            ),
        ];
        for (bytes, reason) in cases {
            assert_eq!(peek(&bytes), Peek::NotTls(reason));
        }
        // Without extensions at all (SSL 3 / TLS 1.0 style).
        let bare = edited(|b| b.truncate(sid + 1 + 32 + 2 + 0x3e + 2));
        let hello = complete(&bare);
        assert_eq!((hello.server_name, hello.alpn.is_empty()), (None, true));
    }

    #[test]
    fn record_level_damage() {
        let bytes = unhex(OPENSSL_SNI_ALPN);
        let msg = message(&bytes);
        let mut split = reframe(msg, &[100]);
        // The second record turned into an alert.
        split[RECORD_HEADER + 100] = 0x15;
        assert_eq!(peek(&split), Peek::NotTls("interleaved non-handshake record"));
        // A record longer than the rest of the message.
        let mut split = reframe(msg, &[100]);
        split[RECORD_HEADER + 100 + 4] += 1;
        split.push(0);
        assert_eq!(peek(&split), Peek::NotTls("data after client hello"));
        // A zero-length record in the middle.
        let mut split = reframe(msg, &[100]);
        split.splice(RECORD_HEADER + 100..RECORD_HEADER + 100, [0x16, 0x03, 0x01, 0x00, 0x00]);
        assert_eq!(peek(&split), Peek::NotTls("empty record"));
        // Fragmented past MAX_PEEK: one-byte records of a 4 KiB message.
        let big = edited(|b| {
            let ext_len = 2 + 32 + 1 + 32 + 2 + 0x3e + 2;
            b.extend_from_slice(&[0xfa, 0xfa, 0x0f, 0xa0]);
            b.extend_from_slice(&[0; 0x0fa0]);
            let n = u16::from_be_bytes([b[ext_len], b[ext_len + 1]]) + 4 + 0x0fa0;
            b[ext_len..ext_len + 2].copy_from_slice(&n.to_be_bytes());
        });
        assert!(matches!(peek(&big), Peek::Hello(_)));
        let tiny = reframe(message(&big), &vec![1; big.len()]);
        assert_eq!(peek(&tiny), Peek::NotTls("client hello too fragmented"));
        assert_eq!(peek(&tiny[..MAX_PEEK]), Peek::NotTls("client hello too fragmented"));
        assert_eq!(peek(&tiny[..MAX_PEEK - 6]), Peek::Incomplete);
    }

    #[test]
    fn largest_hello() {
        // A padding extension filling the message up to MAX_CLIENT_HELLO.
        let base = unhex(OPENSSL_SNI_ALPN);
        let pad = MAX_CLIENT_HELLO - (base.len() - RECORD_HEADER) - 4;
        let grow = |pad: usize| {
            edited(|b| {
                let ext_len = 2 + 32 + 1 + 32 + 2 + 0x3e + 2;
                b.extend_from_slice(&[0x00, 0x15]);
                b.extend_from_slice(&u16::try_from(pad).unwrap().to_be_bytes());
                b.extend_from_slice(&vec![0; pad]);
                let n = usize::from(u16::from_be_bytes([b[ext_len], b[ext_len + 1]])) + 4 + pad;
                b[ext_len..ext_len + 2].copy_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            })
        };
        let max = grow(pad);
        assert_eq!(max.len(), RECORD_HEADER + MAX_CLIENT_HELLO);
        assert_eq!(complete(&max).server_name.as_deref(), Some("a.example.com"));
        let split = reframe(message(&max), &[16384]);
        assert_eq!(complete(&split).len, split.len());
        assert_eq!(peek(&grow(pad + 1)), Peek::NotTls("client hello too large"));
    }

    #[test]
    fn bit_flips_and_truncations_never_panic() {
        let fixtures =
            [unhex(OPENSSL_SNI_ALPN), unhex(OPENSSL_NO_SNI), reframe(message(&unhex(OPENSSL_SNI_ALPN)), &[70])];
        for bytes in &fixtures {
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut flipped = bytes.clone();
                    flipped[i] ^= 1 << bit;
                    check_invariants(&flipped);
                }
                check_invariants(&bytes[..i]);
                check_invariants(&bytes[i..]);
            }
        }
    }

    #[test]
    fn random_mutations_never_panic() {
        let mut rng = fastrand::Rng::with_seed(0x7e57_c11e);
        let fixtures = [
            unhex(OPENSSL_SNI_ALPN),
            unhex(OPENSSL_NO_SNI),
            reframe(message(&unhex(OPENSSL_SNI_ALPN)), &[3, 40, 1, 120]),
            rustls_hello("mutated.example.com", &[b"h2", b"http/1.1"], true, Some(200)),
        ];
        for _ in 0..20_000 {
            let mut bytes = fixtures[rng.usize(..fixtures.len())].clone();
            for _ in 0..rng.usize(1..6) {
                let at = rng.usize(..bytes.len().max(1));
                match rng.u8(..5) {
                    0 if at < bytes.len() => bytes[at] ^= 1 << rng.u8(..8),
                    1 if at < bytes.len() => bytes[at] = rng.u8(..),
                    2 => bytes.truncate(at),
                    3 => bytes.insert(at.min(bytes.len()), rng.u8(..)),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            check_invariants(&bytes);
        }
        for _ in 0..2_000 {
            let mut bytes: Vec<u8> = (0..rng.usize(..600)).map(|_| rng.u8(..)).collect();
            if rng.bool() && bytes.len() > 5 {
                bytes[..5].copy_from_slice(&[0x16, 0x03, 0x01, 0x02, 0x00]);
            }
            check_invariants(&bytes);
        }
    }

    /// What must hold whatever the bytes.
    fn check_invariants(bytes: &[u8]) {
        match peek(bytes) {
            Peek::Hello(hello) => {
                assert!(hello.len <= bytes.len() && hello.len <= MAX_PEEK);
                // Complete, so every shorter prefix is Incomplete or... still
                // the same prefix of a valid hello: never a Hello.
                if hello.len > 0 {
                    assert_eq!(peek(&bytes[..hello.len - 1]), Peek::Incomplete);
                }
                if let Some(name) = hello.server_name {
                    assert!(!name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_graphic()));
                }
                assert!(hello.alpn.iter().all(|name| !name.is_empty()));
            }
            Peek::Incomplete => assert!(bytes.len() < MAX_PEEK),
            Peek::NotTls(reason) => assert!(!reason.is_empty()),
        }
    }
}
