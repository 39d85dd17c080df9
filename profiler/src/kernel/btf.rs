//! A minimal reader of the running kernel's BTF: struct member offsets and enum values.
//! bpf-linker gives Rust eBPF no CO-RE relocations, so user space resolves the offsets the
//! programs need here and hands them over as load-time constants.

use std::collections::HashMap;

use anyhow::{Context as _, Result, anyhow, bail};

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_ENUM64: u32 = 19;

struct Type {
    name: u32,
    kind: u32,
    /// size, or the referenced type for typedef/pointer/modifiers
    size_or_type: u32,
    /// struct/union members (name, type, bit offset, bitfield size) or enum values (name, value)
    members: Vec<(u32, u32, u32, u32)>,
}

pub struct Btf {
    strings: Vec<u8>,
    types: Vec<Type>,
    by_name: HashMap<String, Vec<u32>>,
}

impl Btf {
    pub fn vmlinux() -> Result<Btf> {
        let data = std::fs::read(crate::kernel::BTF_VMLINUX)
            .with_context(|| format!("reading {}", crate::kernel::BTF_VMLINUX))?;
        Btf::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Btf> {
        let u16_at = |o: usize| -> Result<u16> {
            Ok(u16::from_le_bytes(
                data.get(o..o + 2)
                    .ok_or_else(|| anyhow!("BTF truncated"))?
                    .try_into()?,
            ))
        };
        let u32_at = |o: usize| -> Result<u32> {
            Ok(u32::from_le_bytes(
                data.get(o..o + 4)
                    .ok_or_else(|| anyhow!("BTF truncated"))?
                    .try_into()?,
            ))
        };
        if u16_at(0)? != 0xeb9f {
            bail!("not little-endian BTF (bad magic)");
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| anyhow!("BTF string section out of bounds"))?
            .to_vec();
        // Type id 0 is void.
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            size_or_type: 0,
            members: vec![],
        }];
        let (mut o, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        while o < end {
            let (name, info, size_or_type) = (u32_at(o)?, u32_at(o + 4)?, u32_at(o + 8)?);
            o += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = vec![];
            match kind {
                1 | 14 | 17 => o += 4, // int, var, decl_tag
                3 => o += 12,          // array
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let (n, t, off) = (u32_at(o)?, u32_at(o + 4)?, u32_at(o + 8)?);
                        let (bit_off, bits) = if kind_flag {
                            (off & 0xff_ffff, off >> 24)
                        } else {
                            (off, 0)
                        };
                        members.push((n, t, bit_off, bits));
                        o += 12;
                    }
                }
                KIND_ENUM => {
                    for _ in 0..vlen {
                        members.push((u32_at(o)?, 0, u32_at(o + 4)?, 0));
                        o += 8;
                    }
                }
                KIND_ENUM64 => {
                    for _ in 0..vlen {
                        members.push((u32_at(o)?, 0, u32_at(o + 4)?, 0));
                        o += 12;
                    }
                }
                13 => o += 8 * vlen,  // func_proto params
                15 => o += 12 * vlen, // datasec
                _ => {}               // ptr, fwd, typedef, modifiers, func, float, type_tag
            }
            types.push(Type {
                name,
                kind,
                size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            strings,
            types,
            by_name: HashMap::new(),
        };
        // Only the kinds looked up by name: indexing every type would cost tens of MB.
        for id in 1..btf.types.len() as u32 {
            let t = &btf.types[id as usize];
            let n = t.name;
            if n != 0 && matches!(t.kind, KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64) {
                let name = btf.str(n).to_string();
                btf.by_name.entry(name).or_default().push(id);
            }
        }
        Ok(btf)
    }

    fn str(&self, off: u32) -> &str {
        let s = &self.strings[off as usize..];
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    fn struct_id(&self, name: &str) -> Result<u32> {
        self.by_name
            .get(name)
            .and_then(|ids| {
                ids.iter().copied().find(|&id| {
                    let t = &self.types[id as usize];
                    matches!(t.kind, KIND_STRUCT | KIND_UNION) && !t.members.is_empty()
                })
            })
            .ok_or_else(|| anyhow!("struct {name} not in BTF"))
    }

    /// Follows typedefs (e.g. `possible_net_t`) to the struct or union.
    fn resolve(&self, mut id: u32) -> u32 {
        while self.types[id as usize].kind == KIND_TYPEDEF {
            id = self.types[id as usize].size_or_type;
        }
        id
    }

    /// Finds `member` in struct `id`, descending into anonymous structs and unions.
    /// Returns (bit offset, bitfield size, member type).
    fn find(&self, id: u32, member: &str) -> Option<(u32, u32, u32)> {
        let t = &self.types[self.resolve(id) as usize];
        for &(n, ty, bit_off, bits) in &t.members {
            if n != 0 && self.str(n) == member {
                return Some((bit_off, bits, ty));
            }
            if n == 0
                && let Some((o, b, t)) = self.find(ty, member)
            {
                return Some((bit_off + o, b, t));
            }
        }
        None
    }

    /// Byte offset of a member path such as `sk_buff.dev` or `net.ns.inum` (nested structs,
    /// not pointers). Fails on bitfields that do not start on a byte.
    pub fn offset(&self, path: &str) -> Result<u32> {
        let mut parts = path.split('.');
        let root = parts.next().ok_or_else(|| anyhow!("empty path"))?;
        let mut id = self.struct_id(root)?;
        let mut bits = 0;
        for member in parts {
            let (off, size, ty) = self
                .find(id, member)
                .ok_or_else(|| anyhow!("{path}: no member {member} in this kernel's BTF"))?;
            if size != 0 && off % 8 != 0 {
                bail!("{path}: bitfield not byte-aligned");
            }
            bits += off;
            id = ty;
        }
        Ok(bits / 8)
    }

    /// Value of an enumerator, e.g. `IFF_BRIDGE_PORT` (a scan: enumerators are not indexed).
    pub fn enum_value(&self, enumerator: &str) -> Result<u64> {
        for t in &self.types {
            if matches!(t.kind, KIND_ENUM | KIND_ENUM64) {
                for &(n, _, v, _) in &t.members {
                    if self.str(n) == enumerator {
                        return Ok(v as u64);
                    }
                }
            }
        }
        Err(anyhow!("enumerator {enumerator} not in BTF"))
    }

    /// Name of `value` in the enum type `enum_name`, e.g. a `skb_drop_reason`.
    pub fn enumerator(&self, enum_name: &str, value: u64) -> Option<String> {
        let ids = self.by_name.get(enum_name)?;
        ids.iter().find_map(|&id| {
            let t = &self.types[id as usize];
            if !matches!(t.kind, KIND_ENUM | KIND_ENUM64) {
                return None;
            }
            t.members
                .iter()
                .find(|m| m.2 as u64 == value)
                .map(|m| self.str(m.0).to_string())
        })
    }
}
