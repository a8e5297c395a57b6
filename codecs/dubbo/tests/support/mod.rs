//! Test-only Hessian 2.0 writer covering every encoding the reader must skip, plus Dubbo frame
//! builders. Independent of the crate's own (deliberately tiny) writer, so round trips test the
//! reader against a second implementation of the grammar.
#![allow(dead_code)]

/// A Hessian value, with the encoding choices (chunk sizes, typed or not, fixed or variable
/// length) that change the bytes.
#[derive(Debug, Clone)]
pub enum V {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    DateMillis(i64),
    DateMinutes(i32),
    /// Text and the chunk size (in UTF-16 units) used for non-final chunks.
    Str(String, usize),
    /// Bytes and the chunk size used for non-final chunks.
    Bin(Vec<u8>, usize),
    List {
        ty: Option<String>,
        fixed: bool,
        items: Vec<V>,
    },
    Map {
        ty: Option<String>,
        entries: Vec<(V, V)>,
    },
    Obj {
        class: String,
        fields: Vec<(String, V)>,
    },
    Ref(u32),
}

/// Writes values into one Hessian stream (class definitions are shared across the stream,
/// as in a Dubbo body).
#[derive(Default)]
pub struct W {
    pub out: Vec<u8>,
    classes: Vec<(String, Vec<String>)>,
}

impl W {
    pub fn int(&mut self, v: i32) {
        match v {
            -16..=47 => self.out.push((v + 0x90) as u8),
            -2048..=2047 => self.out.extend([(0xc8 + (v >> 8)) as u8, v as u8]),
            -262_144..=262_143 => {
                self.out
                    .extend([(0xd4 + (v >> 16)) as u8, (v >> 8) as u8, v as u8])
            }
            _ => {
                self.out.push(b'I');
                self.out.extend(v.to_be_bytes());
            }
        }
    }

    fn long(&mut self, v: i64) {
        match v {
            -8..=15 => self.out.push((v + 0xe0) as u8),
            -2048..=2047 => self.out.extend([(0xf8 + (v >> 8)) as u8, v as u8]),
            -262_144..=262_143 => {
                self.out
                    .extend([(0x3c + (v >> 16)) as u8, (v >> 8) as u8, v as u8])
            }
            _ if i32::try_from(v).is_ok() => {
                self.out.push(0x59);
                self.out.extend((v as i32).to_be_bytes());
            }
            _ => {
                self.out.push(b'L');
                self.out.extend(v.to_be_bytes());
            }
        }
    }

    fn double(&mut self, v: f64) {
        if v == 0.0 && v.is_sign_positive() {
            self.out.push(0x5b);
        } else if v == 1.0 {
            self.out.push(0x5c);
        } else if v.fract() == 0.0 && (-128.0..=127.0).contains(&v) {
            self.out.extend([0x5d, v as i8 as u8]);
        } else if v.fract() == 0.0 && (-32768.0..=32767.0).contains(&v) {
            self.out.push(0x5e);
            self.out.extend((v as i16).to_be_bytes());
        } else if (v as f32) as f64 == v {
            self.out.push(0x5f);
            self.out.extend((v as f32).to_bits().to_be_bytes());
        } else {
            self.out.push(b'D');
            self.out.extend(v.to_bits().to_be_bytes());
        }
    }

    fn units(&mut self, units: &[u16]) {
        // Java's modified UTF-8 (surrogates as 3-byte sequences).
        for &u in units {
            let u = u32::from(u);
            if u < 0x80 {
                self.out.push(u as u8);
            } else if u < 0x800 {
                self.out
                    .extend([0xc0 | (u >> 6) as u8, 0x80 | (u & 0x3f) as u8]);
            } else {
                self.out.extend([
                    0xe0 | (u >> 12) as u8,
                    0x80 | ((u >> 6) & 0x3f) as u8,
                    0x80 | (u & 0x3f) as u8,
                ]);
            }
        }
    }

    pub fn string(&mut self, s: &str, chunk: usize) {
        let units: Vec<u16> = s.encode_utf16().collect();
        let chunk = chunk.clamp(1, 0xffff);
        let mut rest = &units[..];
        while rest.len() > chunk {
            self.out.push(b'R');
            self.out.extend((chunk as u16).to_be_bytes());
            self.units(&rest[..chunk]);
            rest = &rest[chunk..];
        }
        let n = rest.len();
        if n <= 31 {
            self.out.push(n as u8);
        } else if n <= 1023 {
            self.out.extend([0x30 + (n >> 8) as u8, n as u8]);
        } else {
            self.out.push(b'S');
            self.out.extend((n as u16).to_be_bytes());
        }
        self.units(rest);
    }

    pub fn str(&mut self, s: &str) {
        self.string(s, 0x8000);
    }

    fn binary(&mut self, b: &[u8], chunk: usize) {
        let chunk = chunk.clamp(1, 0xffff);
        let mut rest = b;
        while rest.len() > chunk {
            self.out.push(b'A');
            self.out.extend((chunk as u16).to_be_bytes());
            self.out.extend(&rest[..chunk]);
            rest = &rest[chunk..];
        }
        let n = rest.len();
        if n <= 15 {
            self.out.push(0x20 + n as u8);
        } else if n <= 1023 {
            self.out.extend([0x34 + (n >> 8) as u8, n as u8]);
        } else {
            self.out.push(b'B');
            self.out.extend((n as u16).to_be_bytes());
        }
        self.out.extend(rest);
    }

    pub fn value(&mut self, v: &V) {
        match v {
            V::Null => self.out.push(b'N'),
            V::Bool(b) => self.out.push(if *b { b'T' } else { b'F' }),
            V::Int(i) => self.int(*i),
            V::Long(l) => self.long(*l),
            V::Double(d) => self.double(*d),
            V::DateMillis(ms) => {
                self.out.push(0x4a);
                self.out.extend(ms.to_be_bytes());
            }
            V::DateMinutes(m) => {
                self.out.push(0x4b);
                self.out.extend(m.to_be_bytes());
            }
            V::Str(s, chunk) => self.string(s, *chunk),
            V::Bin(b, chunk) => self.binary(b, *chunk),
            V::List { ty, fixed, items } => {
                match (ty, fixed) {
                    (Some(t), true) if items.len() <= 7 => {
                        self.out.push(0x70 + items.len() as u8);
                        self.str(t);
                    }
                    (Some(t), true) => {
                        self.out.push(b'V');
                        self.str(t);
                        self.int(items.len() as i32);
                    }
                    (None, true) if items.len() <= 7 => self.out.push(0x78 + items.len() as u8),
                    (None, true) => {
                        self.out.push(b'X');
                        self.int(items.len() as i32);
                    }
                    (Some(t), false) => {
                        self.out.push(0x55);
                        self.str(t);
                    }
                    (None, false) => self.out.push(b'W'),
                }
                for i in items {
                    self.value(i);
                }
                if !fixed {
                    self.out.push(b'Z');
                }
            }
            V::Map { ty, entries } => {
                match ty {
                    Some(t) => {
                        self.out.push(b'M');
                        self.str(t);
                    }
                    None => self.out.push(b'H'),
                }
                for (k, v) in entries {
                    self.value(k);
                    self.value(v);
                }
                self.out.push(b'Z');
            }
            V::Obj { class, fields } => {
                let names: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
                let idx = match self
                    .classes
                    .iter()
                    .position(|(c, f)| c == class && *f == names)
                {
                    Some(i) => i,
                    None => {
                        self.out.push(b'C');
                        self.str(class);
                        self.int(names.len() as i32);
                        for n in &names {
                            self.str(n);
                        }
                        self.classes.push((class.clone(), names));
                        self.classes.len() - 1
                    }
                };
                if idx < 16 {
                    self.out.push(0x60 + idx as u8);
                } else {
                    self.out.push(b'O');
                    self.int(idx as i32);
                }
                for (_, v) in fields {
                    self.value(v);
                }
            }
            V::Ref(n) => {
                self.out.push(b'Q');
                self.int(*n as i32);
            }
        }
    }
}

/// Header flag bytes.
pub const REQ_TWOWAY: u8 = 0xc2;
pub const REQ_ONEWAY: u8 = 0x82;
pub const RESPONSE: u8 = 0x02;

/// A whole frame from a header flag byte, status, id and body.
pub fn frame(flags: u8, status: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0xda, 0xbb, flags, status];
    f.extend(id.to_be_bytes());
    f.extend((body.len() as u32).to_be_bytes());
    f.extend(body);
    f
}

/// A request body: header strings, descriptor, arguments, attachments map (`None`: no map).
pub fn request_body(
    path: &str,
    method: &str,
    desc: &str,
    args: &[V],
    attachments: Option<&[(String, V)]>,
) -> Vec<u8> {
    let mut w = W::default();
    w.str("2.0.2");
    w.str(path);
    w.str("1.0.0");
    w.str(method);
    w.str(desc);
    for a in args {
        w.value(a);
    }
    if let Some(att) = attachments {
        w.out.push(b'H');
        for (k, v) in att {
            w.str(k);
            w.value(v);
        }
        w.out.push(b'Z');
    }
    w.out
}

/// String attachments as `V` pairs.
pub fn strs(pairs: &[(&str, &str)]) -> Vec<(String, V)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), V::Str(v.to_string(), 0x8000)))
        .collect()
}

/// Reads a stream file from `tests/vectors/`.
pub fn vector(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
