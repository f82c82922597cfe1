//! The vocabulary of a GGUF file: ggml tensor types with their block geometry, and the typed
//! metadata values (scalars, strings and arrays, arrays nested to any depth).

use std::fmt;

/// Elements per super-block of the k-quants and most i-quants.
pub const QK_K: usize = 256;

/// Every ggml tensor type a GGUF file may name, with the id it is stored as.
///
/// Ids 4 and 5 (the removed Q4_2/Q4_3) and 31–33, 36–38 (removed or never-stored repacked
/// layouts) name no type. The variant names are ggml's own, as users search for them.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
}

/// (type, id, name, elements per block, bytes per block), checked against ggml's type traits
/// and the `gguf` Python package's `GGML_QUANT_SIZES`. One exception: Q8_1 is 36 bytes
/// (`d`, `s` as f16, then 32 quants) as in ggml; gguf-py before its fix said 40.
const TABLE: [(GgmlType, u32, &str, usize, usize); 34] = {
    use GgmlType::*;
    [
        (F32, 0, "F32", 1, 4),
        (F16, 1, "F16", 1, 2),
        (Q4_0, 2, "Q4_0", 32, 2 + 16),
        (Q4_1, 3, "Q4_1", 32, 2 + 2 + 16),
        (Q5_0, 6, "Q5_0", 32, 2 + 4 + 16),
        (Q5_1, 7, "Q5_1", 32, 2 + 2 + 4 + 16),
        (Q8_0, 8, "Q8_0", 32, 2 + 32),
        (Q8_1, 9, "Q8_1", 32, 2 + 2 + 32),
        (Q2_K, 10, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
        (Q3_K, 11, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
        (Q4_K, 12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12),
        (Q5_K, 13, "Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
        (Q6_K, 14, "Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
        (Q8_K, 15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8),
        (IQ2_XXS, 16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
        (IQ2_XS, 17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32),
        (IQ3_XXS, 18, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8),
        (IQ1_S, 19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
        (IQ4_NL, 20, "IQ4_NL", 32, 2 + 16),
        (
            IQ3_S,
            21,
            "IQ3_S",
            QK_K,
            2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4,
        ),
        (IQ2_S, 22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
        (IQ4_XS, 23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
        (I8, 24, "I8", 1, 1),
        (I16, 25, "I16", 1, 2),
        (I32, 26, "I32", 1, 4),
        (I64, 27, "I64", 1, 8),
        (F64, 28, "F64", 1, 8),
        (IQ1_M, 29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
        (BF16, 30, "BF16", 1, 2),
        (TQ1_0, 34, "TQ1_0", QK_K, 2 + 4 * 13),
        (TQ2_0, 35, "TQ2_0", QK_K, 2 + 64),
        (MXFP4, 39, "MXFP4", 32, 1 + 16),
        (NVFP4, 40, "NVFP4", 64, 4 + 32),
        (Q1_0, 41, "Q1_0", 128, 2 + 16),
    ]
};

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 34] = {
        let mut all = [GgmlType::F32; 34];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].0;
            i += 1;
        }
        all
    };

    fn row(self) -> &'static (GgmlType, u32, &'static str, usize, usize) {
        // The table lists the variants in declaration order, so the discriminant indexes it.
        &TABLE[self as usize]
    }

    /// The type stored under `id`, or `None` for an id ggml does not define.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|row| row.1 == id).map(|row| row.0)
    }

    /// The id written in a GGUF tensor info.
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// ggml's name: "Q4_K", "BF16", ...
    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Elements per block (1 for the plain types).
    pub fn block_size(self) -> usize {
        self.row().3
    }

    /// Bytes per block (the element size for the plain types).
    pub fn type_size(self) -> usize {
        self.row().4
    }

    /// True for block formats; false for F32/F16/BF16/F64 and the integer types.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes that `elems` elements take, or `None` when `elems` is not a whole number of
    /// blocks or the size overflows.
    pub fn byte_size(self, elems: u64) -> Option<u64> {
        let block = self.block_size() as u64;
        if !elems.is_multiple_of(block) {
            return None;
        }
        (elems / block).checked_mul(self.type_size() as u64)
    }

    /// Whether [`crate::quant::quantize`] can write this type from f32.
    pub fn can_quantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16
                | BF16
                | Q4_0
                | Q4_1
                | Q5_0
                | Q5_1
                | Q8_0
                | Q8_1
                | Q2_K
                | Q3_K
                | Q4_K
                | Q5_K
                | Q6_K
                | Q8_K
                | IQ4_NL
                | IQ4_XS
                | TQ1_0
                | TQ2_0
                | MXFP4
                | Q1_0
        )
    }

    /// Whether [`crate::quant::dequantize`] can turn this type into f32: every type can (the
    /// dequantizer's match is exhaustive, so a new type cannot be added without a kernel).
    pub fn can_dequantize(self) -> bool {
        true
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_declaration_order_and_ids_are_unique() {
        for (i, row) in TABLE.iter().enumerate() {
            assert_eq!(row.0 as usize, i, "{}", row.2);
            assert_eq!(GgmlType::from_id(row.1), Some(row.0));
            assert_eq!(format!("{:?}", row.0), row.2);
        }
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 42, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
    }

    #[test]
    fn block_geometry() {
        assert_eq!(GgmlType::Q4_0.type_size(), 18);
        assert_eq!(GgmlType::Q8_1.type_size(), 36);
        assert_eq!(GgmlType::Q2_K.type_size(), 84);
        assert_eq!(GgmlType::Q3_K.type_size(), 110);
        assert_eq!(GgmlType::Q4_K.type_size(), 144);
        assert_eq!(GgmlType::Q5_K.type_size(), 176);
        assert_eq!(GgmlType::Q6_K.type_size(), 210);
        assert_eq!(GgmlType::Q8_K.type_size(), 292);
        assert_eq!(GgmlType::Q4_0.byte_size(64), Some(36));
        assert_eq!(GgmlType::Q4_0.byte_size(65), None);
        assert_eq!(GgmlType::F32.byte_size(u64::MAX), None);
    }
}
